"""The environment variables a function's handlers read, beside Lambda's own.

Standard library only and cheap to import: the local runtime's launcher reads these names
before anything else of the engine is imported (see ``airflow_provider_lambdamr.prestart``).
"""

#: A function's environment variable: "0" when its jobs' map tasks run in record mode, so its
#: init phase need not import pyarrow (a task that reads Parquet imports it when it must).
ARROW_AT_INIT_ENV = "LAMBDAMR_ARROW_AT_INIT"
#: A function's environment variable: the rows a reduce task's key block is aimed at, in a job
#: whose shuffle stays in Arrow (default ``arrow_shuffle.BLOCK_ROWS``; see ``block_count``).
BLOCK_ROWS_ENV = "LAMBDAMR_BLOCK_ROWS"
#: Arrow's memory pool, chosen in a function's environment unless the user chose one: its
#: default, mimalloc, spent more time in the kernel than the task computed on this project's
#: Firecracker VM (2a on Parquet: 1.4 s of system CPU against 0.2 s with jemalloc or malloc).
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def arrow_memory_pool(architecture: str) -> str:
    """The memory pool a function on ``architecture`` gets: jemalloc where pyarrow's wheels
    carry it (x86_64), the C library's malloc elsewhere (pyarrow's aarch64 wheels leave
    jemalloc out)."""
    return "jemalloc" if architecture in ("x86_64", "amd64") else "system"


#: The configuration Arrow's bundled jemalloc reads (its own name for MALLOC_CONF).
JEMALLOC_CONF_ENV = "JE_ARROW_MALLOC_CONF"
#: Pages a task frees stay the process's for about ten seconds (jemalloc's decay), so the
#: next task of a warm function reuses them instead of faulting in new ones: a 2b job at
#: 1.6 GB took 400K page faults instead of 600K on this project's Firecracker VM, where a
#: fault costs several microseconds. Arrow's own setting returns them within a second.
JEMALLOC_CONF = "dirty_decay_ms:10000,muzzy_decay_ms:10000"


def arrow_allocator_env(architecture: str, given: dict[str, str] | None = None) -> dict[str, str]:
    """A function's Arrow allocator settings: its memory pool (``arrow_memory_pool``) and
    jemalloc's decay, each unless ``given`` (the caller's environment) sets it."""
    given = given or {}
    return {
        ARROW_POOL_ENV: given.get(ARROW_POOL_ENV) or arrow_memory_pool(architecture),
        JEMALLOC_CONF_ENV: given.get(JEMALLOC_CONF_ENV) or JEMALLOC_CONF,
    }
