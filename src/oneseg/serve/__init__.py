"""`oneseg serve`: an HTTP JSON API and a web page over one model (see docs/serve.md).

action.py     the spec's serve section -> the app on uvicorn (run_serve)
app.py        FastAPI routes, limits, one-line JSON errors
batching.py   the queue whose worker thread runs requests in shared forwards
upload.py     an uploaded file checked against the limits and decoded
responses.py  results as JSON (COCO RLE) or PNG
metrics.py    Prometheus metrics
page/         the page at / (plain HTML, CSS, JavaScript)
"""
