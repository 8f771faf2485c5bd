export { fitZipf, zipfAt, zipfCurve, type ZipfFit, type ZipfCurve } from '../eval/zipf-fit.js';
export { loadRun, loadRuns, loadFeatureFolder, loadFeatureFolders, parseMetrics, type RunData, type MetricPoint, type LoadOptions, type FeatureFolderData, type FeatureFolderSae } from './data.js';
export { buildFigures, densityRankFigure, featuresPerTokenFigure, trainingCurvesFigure, l0FvuFigure, l0LossRecoveredFigure, deadWidthFigure, featuresPerTokenKindFigure, FIGURE_IDS, type Figure } from './figures.js';
export { renderSvg, reportHtml, writeReport, browserHref, type BrowserLink, type ReportResult } from './render.js';
