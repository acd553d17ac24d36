"""`inspectd bench f2pad` end to end on a tiny generated MVTec-layout folder."""

import json

from inspectd.cli import main
from test_mvtec import make_mvtec


def test_bench_f2pad_writes_tables_overlays_and_results(tmp_path, capsys):
    data = make_mvtec(tmp_path / "set", n_train=12, size=96)
    out = tmp_path / "bench"
    code = main(["bench", "f2pad", "--data", str(data), "--methods", "padim", "--size", "96", "--n-test", "3",
                 "--n-val", "2", "--tune", "", "--ablation-images", "1", "--overlays", "2", "--out", str(out),
                 "--set", "max_iters=10", "--set", "min_iters=2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Table I" in printed and "Table III" in printed and "Real defects" in printed
    row = json.loads((out / "results.json").read_text())["results"]["padim"]
    assert row["n_test"] == 3 and 0 <= row["coarse"]["iou"] <= 100 and 0 <= row["f2pad"]["iou"] <= 100
    assert set(row["ablations"]) >= {"initialisation only", "full F2PAD"} and row["real"]["n"] == 2
    assert len(list((out / "padim").glob("overlay_*.png"))) == 2


def test_tuning_grid_is_every_combination_of_the_tuned_settings():
    from argparse import Namespace

    from inspectd.eval.bench import tuning_grid

    grid = tuning_grid(Namespace(tune="0.1,0.3", tune_size_power="1,0", tune_inpaint="telea"))
    assert len(grid) == 4 and {"lam": 0.3, "size_power": 0.0, "inpaint": "telea"} in grid
    assert tuning_grid(Namespace(tune="0.1", tune_size_power="", tune_inpaint="")) == [{"lam": 0.1}]
