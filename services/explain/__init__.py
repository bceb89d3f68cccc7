"""`hfx explain`: why a request missed its SLO, from its trace. analysis.py is the pure core
(spans in, an Explanation out); sources.py reads spans (the local span store, Jaeger's query API);
render.py and plot.py print and draw; cli.py is the command."""
