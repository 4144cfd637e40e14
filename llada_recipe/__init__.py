"""The LLaDA2.0 recipe as a package that uses the generic DAG engine (pipelines/): its config
(`config`), the DAG it builds (`build`), `llada plan` (`plan`), the report (`report`) and the demo."""
