"""Test and bench harnesses: test hosts in network namespaces (``hosts``), the job ledger's audit
(``ledger``), and container images and compose runs (``containers``, ``standins``).

Nothing the product's processes (API, workers, live) run imports this package, and no image ships it.
"""
