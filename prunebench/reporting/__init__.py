"""Stage 3, results: run folders -> tidy CSVs (aggregate) -> figures -> the LaTeX report."""
