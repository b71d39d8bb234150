"""Empty CSV cells are missing values, not text."""

from vrm.data.rows import load_preferences


def test_empty_csv_cells_are_missing_values(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        "prompt,chosen,rejected,margin,label,subset,help_chosen,help_rejected\n"
        "q,a,b,,,,4,2\n"  # every optional cell empty
        "q,a,b,0.5,help,math,,\n"
        "q,a,b, , ,  ,,\n"  # blanks
    )
    examples = load_preferences(str(path), attribute_names=["help", "safe"], objective_column="label")
    assert [e.margin for e in examples] == [None, 0.5, None]
    assert [e.objective_label for e in examples] == [-1, 0, -1]  # masked, not an error
    assert [e.subset for e in examples] == [None, "math", None]


def test_an_empty_prompt_cell_stays_an_explicit_empty_prompt(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected\n,The answer is yes,The answer is no\n")
    (example,) = load_preferences(str(path))
    assert (example.prompt, example.chosen, example.rejected) == ("", "The answer is yes", "The answer is no")
