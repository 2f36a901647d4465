"""The TigerBeetle backend: the only module that imports ``tigerbeetle``."""

from __future__ import annotations

import concurrent.futures

import tigerbeetle as tb


def ping(addresses: str, cluster_id: int, timeout: float) -> None:
    """Look up a non-existent account: proves the cluster answers. The client retries for ever on
    its own, so every call runs under our own timeout."""

    def _lookup() -> None:
        with tb.ClientSync(cluster_id=cluster_id, replica_addresses=addresses) as client:
            client.lookup_accounts([1])

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(_lookup).result(timeout=timeout)
    except concurrent.futures.TimeoutError as exc:
        raise TimeoutError(f"TigerBeetle at {addresses} did not answer within {timeout}s") from exc
    finally:
        pool.shutdown(wait=False)
