"""The Airflow-free control plane: plan, package, run and commit MapReduce jobs."""
