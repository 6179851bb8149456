"""The result pages, by job: raw records to a table (``records``), statistics
(``stats``), figures (``figures``), markdown tables and cell texts (``tables``),
published numbers (``published``) and the page templates (``page``,
``speed_page``). ``benchmarks/render.py`` writes the files."""
