"""What the analytics report is computed from, and how: query and click events joined day by day (`joining`),
the tallies kept across days (`tallies`), A/B comparisons with their confidence intervals (`experiments`), the
low-score queries grouped into missing demand (`demand`), the charts (`charts`) and the report's files
(`writing`).

It imports `pipeline.common` and the runtime layer (`runtime.events`: the record shapes and where they are
stored); never an encoder, training or the service.
"""
