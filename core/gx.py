"""great-expectations, set up once per process: validate a pandas frame with a suite.

Both users of GX (the host verification suite, ``tasks/verify/``, and the report's input
validation, ``reports/validate.py``) validate in-memory frames with suites built in code.
GX's ephemeral context, data source, asset and batch definition hold no data (each
validation passes its own frame), so one set per process serves every call and saves
their setup; :func:`run_suite` is the one way in.

great-expectations is imported on the first validation (it takes seconds), so importing
this module stays cheap.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import great_expectations as gx
    import pandas as pd
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
    )

__all__ = ["run_suite"]

# The lock serialises validations: GX's validators share the data source's execution
# engine, which keeps the batch it is working on.
_LOCK = threading.Lock()
_batch_definition: BatchDefinition | None = None


def _whole_frame_batch_definition() -> BatchDefinition:
    """The process's whole-dataframe batch definition (call with ``_LOCK`` held)."""
    global _batch_definition
    if _batch_definition is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(
            # In-memory stores and no data-docs site: GX's default ephemeral config makes a
            # temporary directory for docs we never build.
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            # GX draws tqdm bars on stderr for every validation: noise in task logs, and time.
            progress_bars=ProgressBarsConfig(globally=False),
            analytics_enabled=False,
        )
        context = gx.get_context(mode="ephemeral", project_config=config)
        asset = context.data_sources.add_pandas(name="caretaker").add_dataframe_asset(
            name="host_facts"
        )
        _batch_definition = asset.add_batch_definition_whole_dataframe("all_hosts")
    return _batch_definition


def run_suite(data: pd.DataFrame, suite: gx.ExpectationSuite) -> ExpectationSuiteValidationResult:
    """Validate a frame with a suite in the process's ephemeral GX context.

    In memory only: nothing is written to disk or sent anywhere. Validations are
    serialised by one lock (they share GX's execution engine).

    Args:
        data: the frame; GX names unexpected rows by its index labels.
        suite: an ``ExpectationSuite`` that belongs to no context (built in code).

    Returns:
        GX's result with ``result_format="COMPLETE"``: every unexpected row's index, not
        GX's default sample of 20.
    """
    with _LOCK:
        batch = _whole_frame_batch_definition().get_batch(batch_parameters={"dataframe": data})
        return batch.validate(suite, result_format="COMPLETE")
