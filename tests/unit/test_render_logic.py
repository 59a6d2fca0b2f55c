from shotline_controller.comfy.results import collect_results, shot_status


def test_shot_status_follows_the_worst_band_or_every_check():
    quality_ok = {"check": "quality", "passed": True}
    quality_bad = {"check": "quality", "passed": False}
    assert shot_status([quality_ok]) == "approved"
    assert shot_status([quality_ok, quality_bad]) == "rejected"
    assert shot_status([]) == "rejected"
    assert shot_status([quality_bad, {"check": "shot", "band": "review", "passed": False}]) == "needs_review"
    assert shot_status([{"check": "shot", "band": "approve"}, {"check": "shot", "band": "reject"}]) == "rejected"


def test_collect_results_reads_files_and_verdicts_from_history_outputs():
    outputs = {"9": {"images": [{"filename": "a.png", "subfolder": "s", "type": "output"}]},
               "10": {"shotline_verdict": [{"check": "quality", "score": 0.5, "passed": False}],
                      "text": ["not a file"]}}
    files, verdicts = collect_results(outputs)
    assert files == [{"node_id": "9", "kind": "images", "filename": "a.png", "subfolder": "s", "type": "output"}]
    assert verdicts == [{"check": "quality", "score": 0.5, "passed": False, "node_id": "10"}]


def test_a_check_nodes_temp_preview_is_no_shot_output():
    preview = {"filename": "ComfyUI_temp_abcde_00001_.png", "subfolder": "", "type": "temp"}
    verdict = {"check": "identity", "score": 0.9, "passed": True}
    outputs = {"4": {"images": [preview], "animated": [False], "text": ["PASS identity 0.90"],
                     "shotline_verdict": [verdict]},
               "9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}
    files, verdicts = collect_results(outputs)
    assert [file["filename"] for file in files] == ["a.png"]
    assert verdicts == [{**verdict, "node_id": "4"}]


def test_a_file_reported_under_two_keys_is_recorded_once():
    saved = {"filename": "v_00001_.mp4", "subfolder": "shotline", "type": "output"}
    outputs = {"9": {"images": [saved], "animated": [True], "shotline_media": [{**saved, "duration_s": 1.0}]}}
    files, _ = collect_results(outputs)
    assert files == [{"node_id": "9", "kind": "images", **saved}]


def test_a_face_refine_record_is_a_verdict_row_with_the_nodes_own_score():
    from shotline_controller.comfy.results import refine_verdict, shot_status
    assert refine_verdict({"check": "face_refine", "score": None, "passed": False})["score"] == 0.0
    row = refine_verdict({"check": "face_refine", "score": 0.81, "passed": True, "faces": []})
    assert (row["check"], row["score"], row["passed"]) == ("face_refine", 0.81, True)
    failed_repair = refine_verdict({"check": "face_refine", "score": 0.2, "passed": False})
    assert shot_status([failed_repair, {"check": "quality", "passed": True}]) == "approved"  # a repair decides nothing
