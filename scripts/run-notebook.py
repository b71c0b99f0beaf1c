"""Execute one notebook on a Jupyter kernel and write it executed (.ipynb) and as HTML, even when a cell fails.

Used by scripts/report.ts (run with Debian's /usr/bin/python3, which has nbclient and nbconvert).
A failing cell stops the run, as in Jupyter; the cells after it stay unexecuted. The executed notebook's
metadata.tsft records the run: {"seconds", "failed_cell" (1-based, or null), "error"}.

    python3 scripts/run-notebook.py NOTEBOOK OUT_IPYNB OUT_HTML --kernel tsft --timeout 3600 --cwd ROOT
"""
import argparse
import base64
import copy
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbconvert import HTMLExporter

ap = argparse.ArgumentParser()
ap.add_argument("notebook")
ap.add_argument("out_ipynb")
ap.add_argument("out_html")
ap.add_argument("--kernel", default="tsft")
ap.add_argument("--timeout", type=int, default=3600)
ap.add_argument("--cwd", default=".")
a = ap.parse_args()

nb = nbformat.read(a.notebook, as_version=4)
client = NotebookClient(nb, timeout=a.timeout, startup_timeout=120, kernel_name=a.kernel,
                        resources={"metadata": {"path": a.cwd}}, record_timing=True)
failed, error = None, None
t0 = time.time()
try:
    client.execute()
except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
    error = f"{type(e).__name__}: {e}"
    # the failing cell: the last one the kernel reported busy for
    ran = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "execution" in c.metadata]
    failed = ran[-1] + 1 if ran else None
    if failed:  # tslab reports compile errors on stderr, not as an error output: keep them with the error
        stderr = "".join(o.get("text", "") for o in nb.cells[failed - 1].get("outputs", []) if o.get("name") == "stderr")
        if stderr.strip():
            error += "\n" + stderr[-2000:]
seconds = round(time.time() - t0, 1)
nb.metadata["tsft"] = {"seconds": seconds, "failed_cell": failed, "error": error}
nbformat.write(nb, a.out_ipynb)
# nbconvert 6.5's HTML template passes inline SVG through lxml's clean_html, which drops every SVG element
# (the live loss chart would be an empty box): show SVG outputs as <img> data URIs instead, which is safe too
html_nb = copy.deepcopy(nb)
for cell in html_nb.cells:
    for out in cell.get("outputs", []):
        svg = out.get("data", {}).get("image/svg+xml")
        if svg:
            svg = "".join(svg) if isinstance(svg, list) else svg
            out["svg_filename"] = "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")
body, _ = HTMLExporter().from_notebook_node(html_nb)
with open(a.out_html, "w", encoding="utf-8") as f:
    f.write(body)
print(f"{a.notebook}: {seconds} s" + (f"; cell {failed} failed" if failed else ""), file=sys.stderr)
if error:
    print(error, file=sys.stderr)
    sys.exit(2)
