"""Report: a self-contained HTML report with inline plotly charts."""
