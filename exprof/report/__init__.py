"""`exprof report`: one self-contained HTML page for a run or a comparison of two.

data.py gathers what the page shows (through the store's named reads, never SQL),
charts.py lays out the inline SVG charts, builder.py renders the Jinja2 templates in
templates/ and writes the file. The page needs no network: styles, script, charts and
data are all inside it.
"""
