"""results.json, report.md and figures: `results` (assembling results.json from the stages'
outputs), `markdown` (report.md's shared tables), `figures` (sample grids, curves, CSV)."""
