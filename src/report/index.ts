export { fitZipf, zipfAt, zipfCurve, type ZipfFit, type ZipfCurve } from '../eval/zipf-fit.js';
export { loadRun, loadRuns, parseMetrics, type RunData, type MetricPoint, type LoadOptions } from './data.js';
export { buildFigures, densityRankFigure, featuresPerTokenFigure, trainingCurvesFigure, l0FvuFigure, l0LossRecoveredFigure, deadWidthFigure, type Figure } from './figures.js';
export { renderSvg, reportHtml, writeReport, type ReportResult } from './render.js';
