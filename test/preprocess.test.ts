import { describe, it, expect } from 'vitest';
import { preprocessRows, unpreprocessRows, datasetScale } from '../src/store/preprocess.js';
import { UserError } from '../src/util/errors.js';

const raw = () => Float32Array.from([1, 2, 3, 6, -4, 0, 4, 8, 7, 7, 7, 7]);

describe('preprocessRows', () => {
  it('center_unit_norm gives each row zero mean and unit norm', () => {
    const x = raw();
    preprocessRows(x, 2, 4, 'center_unit_norm');
    // row 0: mean 3, centred [-2,-1,0,3], norm sqrt(14)
    const s = Math.sqrt(14);
    expect(Array.from(x.subarray(0, 4))).toEqual([-2 / s, -1 / s, 0, 3 / s].map(Math.fround));
    const r1 = x.subarray(4, 8);
    expect(Math.abs(r1.reduce((a, b) => a + b, 0))).toBeLessThan(1e-6);
    expect(Math.hypot(...r1)).toBeCloseTo(1, 6);
  });

  it('center_unit_norm records mean and norm so that the inverse restores the raw rows', () => {
    const x = raw();
    const mean = new Float32Array(3);
    const norm = new Float32Array(3);
    preprocessRows(x, 3, 4, 'center_unit_norm', undefined, mean, norm);
    expect(mean[0]).toBe(3);
    expect(norm[0]).toBeCloseTo(Math.sqrt(14), 5);
    unpreprocessRows(x, 3, 4, 'center_unit_norm', undefined, mean, norm);
    const want = raw();
    for (let i = 0; i < 12; i++) expect(x[i]).toBeCloseTo(want[i], 5);
  });

  it('center_unit_norm leaves a constant row zero with norm 0, and the inverse restores it', () => {
    const x = raw();
    const mean = new Float32Array(3);
    const norm = new Float32Array(3);
    preprocessRows(x, 3, 4, 'center_unit_norm', undefined, mean, norm);
    expect(Array.from(x.subarray(8, 12))).toEqual([0, 0, 0, 0]);
    expect(norm[2]).toBe(0);
    unpreprocessRows(x, 3, 4, 'center_unit_norm', undefined, mean, norm);
    expect(Array.from(x.subarray(8, 12))).toEqual([7, 7, 7, 7]);
  });

  it('dataset_scale multiplies by the scale and its inverse divides', () => {
    const x = raw();
    preprocessRows(x, 3, 4, 'dataset_scale', 0.5);
    expect(Array.from(x)).toEqual(Array.from(raw()).map((v) => v * 0.5));
    unpreprocessRows(x, 3, 4, 'dataset_scale', 0.5);
    expect(Array.from(x)).toEqual(Array.from(raw()));
  });

  it('none leaves rows untouched', () => {
    const x = raw();
    preprocessRows(x, 3, 4, 'none');
    expect(Array.from(x)).toEqual(Array.from(raw()));
  });

  it('dataset_scale without a scale is refused', () => {
    expect(() => preprocessRows(raw(), 3, 4, 'dataset_scale')).toThrow(/positive finite scale/);
  });
});

describe('datasetScale', () => {
  it('makes the mean row norm sqrt(d)', () => {
    const x = Float32Array.from([3, 4, 0, 0, 0, 0, 6, 8]); // norms 5 and 10
    const s = datasetScale(x, 2, 4);
    expect(s).toBeCloseTo(2 / 7.5, 12);
    preprocessRows(x, 2, 4, 'dataset_scale', s);
    expect((Math.hypot(...x.subarray(0, 4)) + Math.hypot(...x.subarray(4, 8))) / 2).toBeCloseTo(2, 5);
  });

  it('refuses an all-zero sample', () => {
    expect(() => datasetScale(new Float32Array(8), 2, 4)).toThrow(UserError);
  });
});
