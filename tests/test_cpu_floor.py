"""`s3latent bench floor`: the CPU floor of a verifying gateway, measured piece by piece."""

from __future__ import annotations

from s3latent.bench import cpu_floor


def test_floor_measures_every_piece_and_sums_them() -> None:
    res = cpu_floor.measure(n_small=40, n_large=4, concurrency=2)
    assert set(res["sizes"]) == {"4096", "1048576"}
    assert res["sigv4_verify_us"] > 0
    for cell in res["sizes"].values():
        get, put = cell["GET"], cell["PUT"]
        assert set(get["parts_us"]) == {"aiohttp_front_end", "sigv4_verify",
                                        "backend_request_signed"}
        assert set(put["parts_us"]) == set(get["parts_us"]) | {"md5"}
        for op in (get, put):
            # /proc counts CPU in clock ticks: a few requests may read as 0 there.
            assert all(v >= 0 for v in op["parts_us"].values())
            assert op["parts_us"]["sigv4_verify"] > 0
            assert abs(op["floor_us"] - sum(op["parts_us"].values())) < 1
        for op in (get, put):
            assert op["minimal_asyncio_client_us"] > 0
            assert op["bare_asyncio_floor_us"] >= 0
        assert put["parts_us"]["md5"] > 0
        assert put["floor_signed_payload_us"] > put["floor_us"]
        assert get["floor_signed_payload_us"] == get["floor_us"]  # a GET has no body
    assert "| PUT | 1 MiB |" in cpu_floor.format_table(res)
