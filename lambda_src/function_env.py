"""The environment variables a function's handlers read, beside Lambda's own.

Standard library only and cheap to import: the local runtime's launcher reads these names
before anything else of the engine is imported (see ``airflow_provider_lambdamr.prestart``).
"""

#: A function's environment variable: "0" when its jobs' map tasks run in record mode, so its
#: init phase need not import pyarrow (a task that reads Parquet imports it when it must).
ARROW_AT_INIT_ENV = "LAMBDAMR_ARROW_AT_INIT"
#: Arrow's memory pool, chosen in a function's environment unless the user chose one: its
#: default, mimalloc, spent more time in the kernel than the task computed on this project's
#: Firecracker VM (2a on Parquet: 1.4 s of system CPU against 0.2 s with jemalloc or malloc).
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def arrow_memory_pool(architecture: str) -> str:
    """The memory pool a function on ``architecture`` gets: jemalloc where pyarrow's wheels
    carry it (x86_64), the C library's malloc elsewhere (pyarrow's aarch64 wheels leave
    jemalloc out)."""
    return "jemalloc" if architecture in ("x86_64", "amd64") else "system"
