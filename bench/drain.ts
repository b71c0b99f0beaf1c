// Waiting for the GPU in benches: read back one element of a tensor (the queue runs in order, so every
// piece of work issued before it is done when the read returns).

import * as tf from '@tensorflow/tfjs-core';

/**
 * Waits for all queued GPU work by reading one element of `t`. The reshape is made inside tf.tidy: an
 * undisposed reshape of a weight shares its buffer and would keep it alive after the model is disposed
 * (train-step.ts leaked the embedding this way into later cases' peak memory).
 */
export async function drain(t: tf.Tensor): Promise<void> {
  const one = tf.tidy(() => tf.slice(tf.reshape(t, [-1]), [0], [1]));
  await one.data();
  one.dispose();
}
