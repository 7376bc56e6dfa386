"""What a reader makes of the records: Markdown tables, plots, the regression gate and the static site.

- ``tables``: the report's tables (``mrcnn-bench report``, ``report --into``), the blocks tasks return
- ``plots``: PNG plots with matplotlib
- ``regress``: the throughput regression gate (``mrcnn-bench regress``)
- ``site``: the static results site (``mrcnn-bench publish``), with its assets in ``site_assets/``
"""

__all__ = ["plots", "regress", "site", "tables"]
