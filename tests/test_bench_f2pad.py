"""`inspectd bench f2pad` end to end on a tiny generated MVTec-layout folder."""

import json

from inspectd.cli import main
from test_mvtec import make_mvtec


def test_bench_f2pad_writes_tables_overlays_and_results(tmp_path, capsys):
    data = make_mvtec(tmp_path / "set", n_train=12, size=96)
    out = tmp_path / "bench"
    code = main(["bench", "f2pad", "--data", str(data), "--methods", "padim", "--size", "96", "--n-test", "3",
                 "--n-val", "2", "--tune", "", "--ablation-images", "1", "--overlays", "2", "--out", str(out),
                 "--set", "max_iters=10", "--set", "min_iters=2", "--tune-real", "0.01,0.03", "--tune-tau", "0.05,0.1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Table I" in printed and "Table III" in printed and "Real defects" in printed
    row = json.loads((out / "results.json").read_text())["results"]["padim"]
    assert row["n_test"] == 3 and 0 <= row["coarse"]["iou"] <= 100 and 0 <= row["f2pad"]["iou"] <= 100
    assert set(row["ablations"]) >= {"initialisation only", "full F2PAD"} and row["real"]["n"] == 2
    # each half of the real defects gets the settings that scored best on the other half
    assert [set(c["settings"]) for c in row["real"]["settings_by_fold"]] == [{"lam", "tau", "close_px", "fill_holes"}] * 2
    assert len(list((out / "padim").glob("overlay_*.png"))) == 2


def test_tuning_grid_is_every_combination_of_the_tuned_settings():
    from argparse import Namespace

    from inspectd.eval.bench import tuning_grid

    grid = tuning_grid(Namespace(tune="0.1,0.3", tune_size_power="1,0", tune_inpaint="telea"))
    assert len(grid) == 4 and {"lam": 0.3, "size_power": 0.0, "inpaint": "telea"} in grid
    assert tuning_grid(Namespace(tune="0.1", tune_size_power="", tune_inpaint="")) == [{"lam": 0.1}]


def test_mask_grid_and_fold_selection():
    from argparse import Namespace

    import numpy as np

    from inspectd.eval.bench import mask_grid, score_grid
    from inspectd.refine import F2PADSettings
    from inspectd.refine.f2pad import RefineResult

    grid = mask_grid(Namespace(tune_tau="0.05,0.1", tune_close="0", tune_fill="false,true"))
    assert len(grid) == 4 and {"tau": 0.1, "close_px": 0, "fill_holes": True} in grid
    # two images whose A is 0.07 on the true defect: only tau 0.05 finds it
    truth = np.zeros((2, 8, 8), bool)
    truth[:, 2:6, 2:6] = True
    anomaly = np.where(truth[..., None], 0.07, 0.0).astype(np.float32)
    runs = [RefineResult(mask=t, normal=-a, anomaly=a, coarse_mask=t, init_mask=t) for t, a in zip(truth, anomaly)]
    scores = score_grid({"lam=0.1": ({"lam": 0.1}, runs)}, truth, F2PADSettings(), grid,
                        select=np.array([True, False]))
    best = max(scores, key=lambda k: scores[k][0])
    assert scores[best][1]["tau"] == 0.05 and scores[best][0] == 100.0
