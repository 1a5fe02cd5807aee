"""The representation bench's targets (issue 15): pass/fail computed from the rows."""

from __future__ import annotations

from typing import Any

from s3latent.bench.representation_bench import _candidates, summarise, table


def _row(size: int, png: int, latent: int, avif: int | None, chosen: int,
         stored_as: str = "avif") -> dict[str, Any]:
    return {"image": f"i{size}-{png}", "key": "k", "size": size, "category": "photo",
            "png_bytes": png, "latent_bytes": latent, "avif_bytes": avif,
            "chosen_bytes": chosen, "stored_as": stored_as, "sidecar_consumed": True,
            "min_latent_or_avif": min(v for v in (latent, avif) if v is not None),
            "avif_anchor_bytes": 1, "avif_anchor_quality": 50}


def test_targets_pass_when_chosen_is_the_minimum_and_far_below_png() -> None:
    rows = [_row(1024, 1000, 80, 50, 50), _row(1024, 1000, 40, 90, 40, "latent")]
    s = summarise(rows)["1024"]
    assert s["target_chosen_le_min_every_image"] and s["target_chosen_le_min_in_total"]
    assert s["target_90pct_below_png"] and s["chosen_x_png"] == 0.045
    assert s["stored_as_avif"] == 1 and s["avif_smaller_than_latent"] == 1
    assert "FAIL" not in table({"rows": rows, "summary": summarise(rows)})


def test_targets_fail_when_one_image_is_above_its_minimum_or_png_too_close() -> None:
    rows = [_row(1024, 1000, 80, 50, 80, "latent"), _row(1024, 1000, 300, 200, 200)]
    s = summarise(rows)["1024"]
    assert not s["target_chosen_le_min_every_image"]
    assert not s["target_90pct_below_png"]  # 280 of 2000 bytes: 86% below
    text = table({"rows": rows, "summary": summarise(rows)})
    assert "every image: FAIL" in text and "90% below PNG in total (0.140x): FAIL" in text


def test_candidates_read_from_the_backend_metadata() -> None:
    assert _candidates({"s3latent-cands": "latent=55064 avif=43467"}) == \
        {"latent": 55064, "avif": 43467}
    assert _candidates({}) == {}
