"""params.yaml holds every knob: it validates, overrides apply, errors name the key."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from dtkd_pipeline.config import ConfigError, load_params

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repository_params_yaml_validates_with_paper_defaults() -> None:
    params = load_params(REPO_PARAMS)
    assert params.data.scale == 4
    assert params.teacher.version == "v1"  # ResShift real-world x4, 15 steps
    assert params.teacher.steps == 15
    assert params.distill.student == "swinir-s-x4"
    assert params.distill.kd.final_weight == 1.0
    assert params.distill.kd.kind == "dwt"
    assert params.distill.kd.levels == 2
    assert params.distill.kd.wavelet == "haar"
    assert params.distill.kd.weights == {"lf": 1.0, "mf": 2.0, "hf": 1.0}
    assert params.distill.kd.schedule == "linear"


def test_override_sets_nested_key_with_yaml_typed_value() -> None:
    params = load_params(REPO_PARAMS, ["distill.kd.weights.mf=3", "teacher.dwt=true"])
    assert params.distill.kd.weights["mf"] == 3.0
    assert params.teacher.dwt is True


def test_unknown_override_key_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"distill\.kd\.wavlet"):
        load_params(REPO_PARAMS, ["distill.kd.wavlet=db2"])


def test_missing_key_error_names_key_and_file(tmp_path: Path) -> None:
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    del raw["distill"]["ema_decay"]
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert "distill.ema_decay: missing" in str(info.value)
    assert str(path) in str(info.value)


def test_invalid_values_are_reported_with_their_keys(tmp_path: Path) -> None:
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    raw["data"]["lr_tile"] = 100
    raw["distill"]["kd"]["wavelet"] = "nonsense"
    raw["teacher"]["typo_key"] = 1
    raw["evaluate"]["efficiency"]["student_compile"] = "fast"
    with pytest.raises(ConfigError) as info:
        load_params(_write(tmp_path, raw))
    message = str(info.value)
    assert "data.lr_tile" in message and "multiple of 64" in message
    assert "distill.kd.wavelet" in message
    assert "teacher.typo_key: unknown key" in message
    assert "evaluate.efficiency.student_compile" in message and "reduce-overhead" in message


def test_patch_larger_than_tile_is_refused() -> None:
    with pytest.raises(ConfigError, match="patch_size"):
        load_params(REPO_PARAMS, ["distill.patch_size=128"])


def test_a_stride_that_leaves_gaps_between_tiles_is_refused_naming_both_keys() -> None:
    with pytest.raises(ConfigError, match=r"data\.stride \(128\) exceeds data\.lr_tile \(64\)"):
        load_params(REPO_PARAMS, ["data.stride=128"])
    assert load_params(REPO_PARAMS, ["data.stride=64"]).data.stride == 64  # touching tiles


def test_a_dwt_depth_the_hr_patch_cannot_hold_is_refused_with_the_largest_allowed() -> None:
    # A 32-px HR patch (8 LR px x 4) holds 2 levels of the 8-tap db4 (pywt.dwt_max_level).
    small_db4 = ["distill.patch_size=8", "distill.kd.wavelet=db4"]
    with pytest.raises(ConfigError, match=r"distill\.kd\.levels \(3\) .* at most 2\."):
        load_params(REPO_PARAMS, [*small_db4, "distill.kd.levels=3"])
    assert load_params(REPO_PARAMS, [*small_db4, "distill.kd.levels=2"]).distill.kd.levels == 2
    # Haar halves a patch of at least 32 px more often than the 4 levels allowed at most.
    assert (
        load_params(REPO_PARAMS, ["distill.patch_size=8", "distill.kd.levels=4"]).distill.kd.levels
        == 4
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distill.betas=[1.5,0.999]", r"distill\.betas\.0: .*less than 1"),
        ("distill.seed=-1", r"distill\.seed: .*greater than or equal to 0"),
        ("distill.student=swinir-s-x2", r"upscales x2 but data\.scale is 4"),
        ("evaluate.bands.wavelet=haarr", r"evaluate\.bands\.wavelet: .*unknown discrete wavelet"),
        ("evaluate.efficiency.lr_size=16", r"evaluate\.efficiency: .*lr_size 16 is too small"),
        ("evaluate.student_tile=16", r"student_overlap \(16\) must be smaller than student_tile"),
        ("teacher.preview=data/cache/preview.jpg", r"teacher\.preview: .*name ending in \.png"),
        (
            "teacher.version=v3",
            r"'resshift-realsr-v1' are not .* set teacher\.unet_weights=resshift-realsr-v3",
        ),
        ("teacher.seed=99999999999999999999", r"teacher\.seed: .*less than 18446744073709551616"),
        ("distill.seed=99999999999999999999", r"distill\.seed: .*less than"),
        ("evaluate.teacher_seeds=[1, 1]", r"evaluate\.teacher_seeds: .*repeats a seed"),
        ("distill.lr=.inf", r"distill\.lr: .*finite number"),
        ("distill.kd.final_weight=.nan", r"distill\.kd\.final_weight: .*finite number"),
        ("distill.milestones=[100, 100]", r"strictly increasing"),
        ("distill.lr=true", r"distill\.lr: .*got the boolean True"),
        ("distill.betas=[0.9, false]", r"distill\.betas\.1: .*got the boolean False"),
        (
            "evaluate.efficiency.batch_sizes=[1, 16, 1]",
            r"evaluate\.efficiency\.batch_sizes: .*repeats 1, which would be timed twice",
        ),
        (
            "evaluate.efficiency.precisions=[bf16, bf16]",
            r"evaluate\.efficiency\.precisions: .*repeats bf16",
        ),
        (
            "evaluate.models.students={' ': [data/models/student.pt]}",
            r"student label ' ' is blank",
        ),
        ("data.lr_tile=576", r"data\.lr_tile: .*less than or equal to 512"),
        (
            "evaluate.sets=[{name: s, layout: hr-only, path: x, lr_dir: y}]",
            r"hr_dir/lr_dir apply to the paired layout only, not 'hr-only'",
        ),
        (
            "evaluate.models.students={bicubic: [data/models/student.pt]}",
            r"student label\(s\) \['bicubic'\] name built-in rows",
        ),
        (
            "evaluate.models={bicubic: false, teacher: false, one_step: null, students: {}}",
            r"no model to evaluate",
        ),
    ],
)
def test_values_that_would_fail_late_are_refused_when_params_load(
    override: str, message: str
) -> None:
    """Each of these used to pass loading and fail mid-run (distill: after --restart-on-change had
    deleted the checkpoints; evaluate: after every test set was scored)."""
    with pytest.raises(ConfigError, match=message):
        load_params(REPO_PARAMS, [override])


def test_a_band_depth_the_cached_hr_tile_cannot_hold_is_refused_with_the_largest_allowed() -> None:
    # The demo's 256-px HR tiles hold 3 levels of the 20-tap db10 (pywt.dwt_max_level).
    db10 = ["evaluate.bands.wavelet=db10"]
    with pytest.raises(ConfigError, match=r"evaluate\.bands\.levels \(4\) .* at most 3\."):
        load_params(REPO_PARAMS, [*db10, "evaluate.bands.levels=4"])
    assert load_params(REPO_PARAMS, [*db10, "evaluate.bands.levels=3"]).evaluate.bands.levels == 3
    # 512-px tiles hold 4; a folder's image sizes are unknown when params load.
    bigger = [*db10, "evaluate.bands.levels=4", "data.lr_tile=128"]
    assert load_params(REPO_PARAMS, bigger).evaluate.bands.levels == 4
    folder = [*db10, "evaluate.bands.levels=4", "evaluate.bands.source=bands_in"]
    assert load_params(REPO_PARAMS, folder).evaluate.bands.levels == 4


def test_a_paper_delta_that_is_not_a_finite_number_is_refused_by_key() -> None:
    with pytest.raises(ConfigError, match=r"report\.paper_deltas\.demo\.psnr_y: .*finite number"):
        load_params(REPO_PARAMS, ["report.paper_deltas={demo: {psnr_y: .nan}}"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("teacher.batch_size=true", r"teacher\.batch_size: .*valid integer \(got True\)"),
        ("distill.iterations='100'", r"distill\.iterations: .*valid integer \(got '100'\)"),
        ("evaluate.teacher_seeds=[2.0]", r"evaluate\.teacher_seeds\.0: .*valid integer"),
        ("teacher.random_weights=1", r"teacher\.random_weights: .*valid boolean \(got 1\)"),
        ("distill.augment='yes'", r"distill\.augment: .*valid boolean \(got 'yes'\)"),
    ],
)
def test_a_value_of_another_type_is_refused_not_converted(override: str, message: str) -> None:
    """Pydantic's lax mode ran `true` as a batch of 1 and the string 'yes' as true."""
    with pytest.raises(ConfigError, match=message):
        load_params(REPO_PARAMS, [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.prepared_dir=data/demo", r"data\.hr_dir \(data/demo/hr\) lies inside data\.prep"),
        ("evaluate.metrics_dir=data/evaluation", r"evaluate\.metrics_dir .* and evaluate\.out_dir"),
        ("evaluate.plots_dir=data/evaluation/plots", r"evaluate\.plots_dir .* overlap"),
        ("report.out_dir=data", r"and report\.out_dir \(data\) overlap"),
        ("teacher.preview=data/cache/teacher.zarr/p.png", r"teacher\.store .* teacher\.preview"),
        ("evaluate.out_dir=data/demo/hr/eval", r"evaluate\.out_dir .* lies inside data\.hr_dir"),
    ],
)
def test_output_folders_that_nest_or_hold_the_inputs_are_refused(
    override: str, message: str
) -> None:
    """Stages replace output folders whole: prepare into data/demo deleted the demo photos."""
    with pytest.raises(ConfigError, match=message):
        load_params(REPO_PARAMS, [override])


def test_a_teacher_version_neither_preset_nor_file_is_refused_when_params_load(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"teacher\.version: 'nope\.yaml' is neither a ResShift"):
        load_params(REPO_PARAMS, ["teacher.version=nope.yaml"])
    config = tmp_path / "mine.yaml"
    config.write_text("{}")  # its content is checked when the teacher is built
    assert load_params(REPO_PARAMS, [f"teacher.version={config}"]).teacher.version == str(config)


def test_a_step_count_the_teacher_was_not_trained_for_is_refused_when_params_load() -> None:
    """Refused before prepare-data runs under dvc repro, not when cache-teacher starts."""
    with pytest.raises(ConfigError) as info:
        load_params(REPO_PARAMS, ["teacher.steps=4"])
    message = str(info.value)
    assert message.startswith(f"{REPO_PARAMS}: 1 invalid value(s)")
    assert "teacher: teacher.steps 4 is not the step count of teacher.version v1" in message
    assert "trained for 15 steps" in message and "(presets v1: 15, v2: 15, v3: 4)" in message
    assert message.endswith("set teacher.steps (cache-teacher --steps) to 15")
    # A new version usually needs both its weights and its step count: named together.
    with pytest.raises(ConfigError, match=r"unet_weights=resshift-realsr-v3; teacher\.steps 15"):
        load_params(REPO_PARAMS, ["teacher.version=v3"])
    v3 = ["teacher.version=v3", "teacher.steps=4", "teacher.unet_weights=resshift-realsr-v3"]
    assert load_params(REPO_PARAMS, v3).teacher.steps == 4
    tiny = REPO_PARAMS.parent / "tests" / "data" / "resshift_tiny_t2.yaml"
    with pytest.raises(
        ConfigError, match=r"config \(its diffusion\.params\.steps\) was trained for 2"
    ):
        load_params(REPO_PARAMS, [f"teacher.version={tiny}"])


def test_missing_and_malformed_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_params(bad)
    assert f'in "{bad}", line 1' in str(caught.value)  # where, in the file's own name
    assert "<unicode string>" not in str(caught.value)


def test_unreadable_params_files_are_named_with_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder; pass --params"):
        load_params(tmp_path)
    binary = tmp_path / "weights.pth"
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"weights\.pth is not UTF-8 text"):
        load_params(binary)
    twice = tmp_path / "twice.yaml"
    twice.write_text(REPO_PARAMS.read_text() + "\ndata:\n  scale: 4\n")
    with pytest.raises(ConfigError, match="key 'data' is given twice"):
        load_params(twice)


def test_an_override_that_is_not_yaml_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'distill\.milestones=\[1,2'.*not valid YAML"):
        load_params(REPO_PARAMS, ["distill.milestones=[1,2"])


def test_an_invalid_value_set_by_an_override_names_the_override_not_only_the_file() -> None:
    """params.yaml itself held a valid value: the error sent the user looking in the wrong place."""
    with pytest.raises(ConfigError) as info:
        load_params(REPO_PARAMS, ["distill.iterations=abc"])
    assert (
        "distill.iterations: Input should be a valid integer (got 'abc') "
        "[set by -S distill.iterations]"
    ) in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_params(REPO_PARAMS, ["distill.kd={kind: dwt}"])
    assert "distill.kd.levels: missing; add it to the -S distill.kd value" in str(info.value)


def test_a_key_glued_to_its_value_by_a_colon_is_explained() -> None:
    """`{name:demo}` (no space) is one YAML key 'name:demo': the bare "unknown key" puzzled."""
    sets = "evaluate.sets=[{name:demo, layout: paired, path: data/prepared/val}]"
    with pytest.raises(ConfigError) as info:
        load_params(REPO_PARAMS, [sets])
    assert (
        "evaluate.sets.0.name:demo: unknown key; remove it or check its spelling ('name:demo': "
        "YAML needs a space after the colon, as in 'key: value') [set by -S evaluate.sets]"
    ) in str(info.value)


def test_unknown_student_is_refused_when_params_load() -> None:
    with pytest.raises(ConfigError, match=r"distill\.student: .*unknown student 'swinir-s-x5'"):
        load_params(REPO_PARAMS, ["distill.student=swinir-s-x5"])
    with pytest.raises(ConfigError, match=r"evaluate\.device"):
        load_params(REPO_PARAMS, ["evaluate.device=tpu"])


def test_report_baseline_must_be_an_evaluated_model() -> None:
    with pytest.raises(ConfigError, match=r"report\.baseline 'L1 only' is not an evaluated model"):
        load_params(REPO_PARAMS, ["report.baseline=L1 only"])
    params = load_params(
        REPO_PARAMS,
        [
            "evaluate.models.students={DTKD: [a.pt], L1 only: [b.pt, c.pt]}",
            "report.baseline=L1 only",
        ],
    )
    assert params.evaluate.models.students["L1 only"] == [Path("b.pt"), Path("c.pt")]


def test_evaluate_sets_need_unique_names_and_known_layouts() -> None:
    twice = "[{name: a, layout: paired, path: x}, {name: a, layout: hr-only, path: y}]"
    with pytest.raises(ConfigError, match="repeated: \\['a'\\]"):
        load_params(REPO_PARAMS, [f"evaluate.sets={twice}"])
    with pytest.raises(ConfigError, match=r"evaluate\.sets\.0\.layout"):
        load_params(REPO_PARAMS, ["evaluate.sets=[{name: a, layout: div2k, path: x}]"])
    with pytest.raises(ConfigError, match="give at least one per label"):
        load_params(REPO_PARAMS, ["evaluate.models.students={DTKD: []}"])


def _documented_commands() -> list[list[str]]:
    """Every command in the bash blocks of README.md and docs/ that passes `-S`, as argv lists."""
    root = REPO_PARAMS.parent
    text = "".join(p.read_text() for p in [root / "README.md", *sorted(root.glob("docs/*.md"))])
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        joined = block.replace("\\\n", " ").replace("$J", "2")  # the ablation loop's variable
        for line in joined.splitlines():
            for command in re.split(r"&&|;", line.split("#")[0]):
                argv = shlex.split(command)
                if "-S" in argv:
                    commands.append(argv)
    return commands


def test_every_documented_override_names_a_valid_params_key_and_value() -> None:
    """The recipes users copy (paper set-up, L1 baseline, ablations, GPU settings) must load."""
    commands = _documented_commands()
    assert len(commands) >= 12  # paper recipe, L1-only, 6 ablation lines, GPU and benchmark lines
    for argv in commands:
        overrides = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-S"]
        load_params(REPO_PARAMS, overrides)  # raises ConfigError naming the key


@pytest.mark.parametrize(
    ("deltas", "message"),
    [
        (
            "{Demo: {psnr_y: 0.1}}",
            r"names set 'Demo', which evaluate\.sets lacks; use one of \['demo'\]",
        ),
        ("{demo: {psnr: 0.1}}", r"paper_deltas\.demo: \['psnr'\] are not metric columns.*'psnr_y'"),
    ],
)
def test_paper_deltas_must_name_an_evaluated_set_and_a_metric_column(
    deltas: str, message: str
) -> None:
    """A misspelt key once printed an empty 'paper (reported)' row or nothing at all."""
    with pytest.raises(ConfigError, match=message):
        load_params(REPO_PARAMS, [f"report.paper_deltas={deltas}"])
    rgb = load_params(REPO_PARAMS, ["evaluate.color=rgb", "report.paper_deltas={demo: {psnr: 1}}"])
    assert rgb.report.paper_deltas == {"demo": {"psnr": 1.0}}


# Mappings whose keys are the user's names (student labels, test sets), not knobs.
_USER_KEYED = {("evaluate", "models", "students"), ("report", "paper_deltas")}


def _params_leaves(node: object, key: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The dotted keys of params.yaml's knobs: every value that is not a section."""
    if isinstance(node, dict) and key not in _USER_KEYED and node:
        return [leaf for name, sub in node.items() for leaf in _params_leaves(sub, (*key, name))]
    return [key]


@pytest.mark.parametrize(
    "key", [".".join(key) for key in _params_leaves(yaml.safe_load(REPO_PARAMS.read_text()))]
)
def test_every_params_leaf_rejects_a_bad_value_naming_its_key_and_the_file(
    tmp_path: Path, key: str
) -> None:
    """No knob takes anything: a value of the wrong shape is refused under its full key."""
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    *sections, name = key.split(".")
    node = raw
    for section in sections:
        node = node[section]
    node[name] = ["not a mapping"] if isinstance(node[name], dict) else {"not": "a value"}
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert f"{path}: " in str(info.value)
    assert re.search(rf"^  {re.escape(key)}[:.]", str(info.value), flags=re.MULTILINE)


def _leaf_key_lines(node: yaml.MappingNode, key: tuple[str, ...] = ()) -> list[tuple[str, int]]:
    """(dotted key, line number) of each knob in a composed params.yaml."""
    found = []
    for key_node, value in node.value:
        name = (*key, key_node.value)
        if isinstance(value, yaml.MappingNode) and value.value and name not in _USER_KEYED:
            found += _leaf_key_lines(value, name)
        else:
            found.append((".".join(name), key_node.start_mark.line))
    return found


def test_every_params_leaf_is_documented_by_a_comment_on_its_line() -> None:
    """The project rule: a knob says what it does where it is set, not only in code."""
    text = REPO_PARAMS.read_text()
    lines = text.splitlines()
    undocumented = [
        key for key, line in _leaf_key_lines(yaml.compose(text)) if "#" not in lines[line]
    ]
    assert not undocumented


def test_validator_messages_state_the_value_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_params(REPO_PARAMS, ["data.lr_tile=100"])
    assert str(info.value).count("100") == 1 and "Value error" not in str(info.value)
