"""A conformance kit for `Warehouse` adapters: it drives any adapter through the contract of
activities/warehouse.py and reports each clause held or broken, with the calls that broke it.

    python -m activities.warehouse_kit check mycompany.erp:Erp.from_settings --sku 1 --sku 2

`runner.run_kit` is the library's entry, `clauses` holds the rules, `pytest_plugin` turns them into
one test per clause of an adapter's own suite; docs/warehouse-kit.md says what each clause checks.
"""
