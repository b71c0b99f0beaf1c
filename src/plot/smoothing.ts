// TensorBoard's debiased exponential moving average, as ms-swift's tensorboard_smoothing:
//   x = x·s + v;  n = n·s + 1;  out = x / n
// so the first point is the first value (no bias towards 0) and later points weight the past by s^k.

/**
 * @example tensorboardSmoothing([1, 2, 3], 0.9) // [1, 1.526…, 2.073…]
 */
export function tensorboardSmoothing(values: readonly number[], smooth = 0.9): number[] {
  if (!(smooth >= 0 && smooth < 1)) throw new RangeError(`smoothing must be in [0, 1), got ${smooth}`);
  const out: number[] = [];
  let x = 0, n = 0;
  for (const v of values) {
    x = x * smooth + v;
    n = n * smooth + 1;
    out.push(x / n);
  }
  return out;
}
