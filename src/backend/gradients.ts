// Everything tf.grad / tf.variableGrads need, imported wherever they are used:
// - tfjs's gradient functions: @tensorflow/tfjs-core's CommonJS build (what Node, tsx and tslab load)
//   ships none; the union package's build registers them all into the shared global registry;
// - kernels those gradients call that a backend lacks (wasm: UnsortedSegmentSum, tf.gather's gradient).
import '@tensorflow/tfjs';
import './kernels/wasm-unsorted-segment-sum';
