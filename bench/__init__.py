"""`make bench`: the service measured against its floors, on real processes (BENCHMARKS.md).

suite.py is the run itself (`python -m bench`); simulation_load.py the fulfillment simulation's open
loop; trivial_workflow.py and trivial_worker.py Temporal's floor; placement_timeline.py and
traced_worker.py where one placement's time goes. results.json holds the last full run's figures.
"""
