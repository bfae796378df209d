"""Tunable launch parameters (kernels/tuning.py): search space, config files, and the kernels run with other configs."""
import itertools
import json

import pytest
import torch

import moeperf_kernels as kernels
from moeperf_kernels import _launch, tuning
from moeperf_kernels._launch import next_pow2
from pytest_moeperf.oracle import compare, reference
from tests.cases import Case, make_inputs


@pytest.fixture
def config_dir(tmp_path):
    with tuning.configs_from(tmp_path):
        yield tmp_path


def write_configs(folder, name, table):
    (folder / name).write_text(json.dumps({"triton": "test", "configs": table}))


@pytest.mark.parametrize("op, H, M, k, elem", [("permute", 4096, 64, 2, 2), ("permute", 7168, 1, 8, 1),
                                               ("unpermute", 4096, 4096, 8, 2), ("permute", 96, 3, 6, 4)])
def test_the_search_space_holds_the_default_first_and_only_configs_that_can_run(op, H, M, k, elem):
    space = tuning.search_space(op, H, M, k, elem)
    assert space[0] == tuning.default_config(op, H, M, k, elem)
    assert len(space) > 1 and len({tuple(c.values()) for c in space}) == len(space)
    for c in space[1:]:
        assert tuning.problem_with(c, op, H, k, elem) is None
        assert c["BLOCK_T"] <= next_pow2(M)


def test_the_default_config_is_one_that_problem_with_accepts_at_every_shape(monkeypatch):
    """The GPU's defaults (the interpreter's differ) obey the tuned configs' rules: a permute of narrow rows (H = 5)
    once got 512-token tiles, 1024 routes ranked pairwise, and a minute of Triton compilation per shape."""
    monkeypatch.setattr(_launch, "INTERPRETED", False)
    for op, H, k, M, elem in itertools.product(("permute", "unpermute"), (5, 8, 64, 96, 256, 4096, 7168),
                                               (1, 2, 6, 8, 16), (1, 7, 64, 4096), (1, 2, 4)):
        config = tuning.default_config(op, H, M, k, elem)
        assert tuning.problem_with(config, op, H, k, elem) is None, (op, H, k, M, elem, config)
    assert tuning.default_config("permute", 5, 7, 2, 2)["BLOCK_T"] == 64


@pytest.mark.parametrize("H, M, k, elem, want", [
    (4096, 4096, 2, 2, (1, 4096, 16)),  # Mixtral: the whole row, 16 bytes a thread
    (7168, 512, 8, 2, (1, 1024, 4)),  # DeepSeek-V3 under 128 MiB of reads: 7 x 1024 columns, none masked
    (7168, 4096, 8, 2, (1, 4096, 16)),  # 448 MiB: the row's whole width (a quarter of the second block masked)
    (3584, 2048, 8, 2, (1, 512, 2)),  # Qwen2-57B, 112 MiB: 7 x 512
    (4096, 512, 8, 2, (1, 2048, 8)),  # Qwen3-235B, 32 MiB: eight routes' tiles of 4096 columns would pass 32 KiB
    (4096, 2048, 8, 2, (1, 4096, 16)),  # 128 MiB: the whole row, whatever the routes' tiles
    (2048, 64, 8, 2, (1, 1024, 4)),  # 64 tokens: columns halved until the grid has 128 programs
    (7168, 256, 8, 4, (1, 1024, 8)),  # fp32 rows: 8 KiB is 2048 columns; 16 bytes a thread
    (96, 4096, 2, 2, (2, 128, 1)),  # narrow rows: tokens up to a 256-element tile
])
def test_the_unpermute_default_tile_is_reduce_blocks_from_64_tokens_with_two_routes(monkeypatch, H, M, k, elem, want):
    monkeypatch.setattr(_launch, "INTERPRETED", False)
    assert _launch.reduce_block(H, M, k, elem) == want
    for op in ("unpermute", "unpermute_and_reduce"):
        assert tuning.default_config(op, H, M, k, elem) == dict(zip(tuning.KEYS, want))


@pytest.mark.parametrize("H, M, k", [(4096, 48, 2), (7168, 1, 8), (5120, 4096, 1)])
def test_small_batches_and_one_route_a_token_keep_row_blocks_tile(monkeypatch, H, M, k):
    """Below 64 tokens reduce_block's one- and two-warp tiles ran 2-10% slower on an H100; with one route a token
    up to 5%."""
    monkeypatch.setattr(_launch, "INTERPRETED", False)
    assert _launch.reduce_block(H, M, k, 2) is None
    block_t, block_h = _launch.row_block(H, M, 2)
    config = tuning.default_config("unpermute", H, M, k, 2)
    assert (config["BLOCK_T"], config["BLOCK_H"]) == (block_t, block_h)
    assert config == tuning.default_config("unpermute_and_reduce", H, M, k, 2)


@pytest.mark.skipif(not _launch.INTERPRETED, reason="the interpreter's tiles (CPU runs)")
def test_under_the_interpreter_the_unpermute_keeps_row_blocks_tiles_of_many_tokens():
    assert _launch.reduce_block(4096, 4096, 2, 2) is None
    assert tuning.default_config("unpermute", 64, 64, 2, 2)["BLOCK_T"] > 1


@pytest.mark.parametrize("config, words", [
    ({"BLOCK_T": 3, "BLOCK_H": 256, "num_warps": 4}, "BLOCK_T must be a power of two"),
    ({"BLOCK_T": 1, "BLOCK_H": 8192, "num_warps": 4}, "wider than the row"),
    ({"BLOCK_T": 16, "BLOCK_H": 4096, "num_warps": 4}, "over 32768 bytes"),
    ({"BLOCK_T": 1, "BLOCK_H": 256, "num_warps": 16}, "does not fit a tile of 256"),
    ({"BLOCK_T": 32, "BLOCK_H": 256, "num_warps": 4}, "over the 128 one program ranks"),
    ({"BLOCK_T": 1, "BLOCK_H": 256}, "exactly the keys"),
])
def test_configs_that_cannot_run_are_refused_with_the_reason(config, words):
    assert words in tuning.problem_with(config, "permute", 4096, 8, 2)


def test_a_call_takes_the_entry_of_its_own_batch_size_and_the_defaults_elsewhere(config_dir):
    name = tuning.config_name("permute", 4096, 2, torch.bfloat16, "cpu", E=8)
    assert name == "permute,E=8,H=4096,k=2,dtype=bfloat16,device_name=cpu.json"
    small = {"BLOCK_T": 1, "BLOCK_H": 1024, "num_warps": 2}
    large = {"BLOCK_T": 4, "BLOCK_H": 2048, "num_warps": 8}
    write_configs(config_dir, name, {"1": small, "256": large})
    get = lambda M: tuning.launch_config("permute", M, 4096, 2, torch.bfloat16, torch.device("cpu"), E=8)  # noqa
    assert get(1) == small and get(256) == large
    # an entry was shown faster only at its own batch size: every other batch size runs the defaults
    for M in (2, 100, 200, 10_000):
        assert get(M) == tuning.default_config("permute", 4096, M, 2, 2)
    # another shape, dtype or GPU has no file: the defaults
    assert tuning.launch_config("permute", 64, 4096, 2, torch.float16, torch.device("cpu"), E=8) == \
        tuning.default_config("permute", 4096, 64, 2, 2)
    assert tuning.launch_config("unpermute", 64, 4096, 2, torch.bfloat16, torch.device("cpu")) == \
        tuning.default_config("unpermute", 4096, 64, 2, 2)
    with tuning.forced(large, "permute"):
        assert get(1) == large
        assert tuning.launch_config("unpermute", 1, 4096, 2, torch.bfloat16, torch.device("cpu")) == \
            tuning.default_config("unpermute", 4096, 1, 2, 2)


def test_a_choice_is_remembered_until_the_files_or_the_folder_change(config_dir, tmp_path_factory):
    name = tuning.config_name("permute", 4096, 2, torch.bfloat16, "cpu", E=8)
    small = {"BLOCK_T": 1, "BLOCK_H": 1024, "num_warps": 2}
    large = {"BLOCK_T": 4, "BLOCK_H": 2048, "num_warps": 8}
    get = lambda: tuning.launch_config("permute", 1, 4096, 2, torch.bfloat16, torch.device("cpu"), E=8)  # noqa
    write_configs(config_dir, name, {"1": small})
    assert get() == small
    write_configs(config_dir, name, {"1": large})
    assert get() == small  # remembered: a call does not read the file again
    tuning.clear_cache()  # as writing a tuned file does (pytest_moeperf/store/tuned.py)
    assert get() == large
    with tuning.configs_from(tmp_path_factory.mktemp("empty")):
        assert get() == tuning.default_config("permute", 4096, 1, 2, 2)
        with tuning.forced(small, "permute"):
            assert get() == small
    assert get() == large


@pytest.mark.parametrize("content, words", [
    ("{not json", "is unreadable"),
    (json.dumps({"configs": {"x": {}}}), "is unreadable"),
    (json.dumps({"configs": {"8": {"BLOCK_T": 1}}}), "batch size 8: needs exactly"),
    (json.dumps({"configs": {"8": {"BLOCK_T": 1, "BLOCK_H": 131072, "num_warps": 4}}}), "wider than the row"),
])
def test_a_bad_config_file_is_an_error_that_names_it(config_dir, content, words):
    name = tuning.config_name("unpermute", 64, 2, torch.float32, "cpu")
    (config_dir / name).write_text(content)
    with pytest.raises(tuning.ConfigError, match=words) as e:
        tuning.launch_config("unpermute", 8, 64, 2, torch.float32, torch.device("cpu"))
    assert name in str(e.value)


# Small rows: under the Triton interpreter every program costs, and the narrowest configs split a row into 64.
CASES = [Case(33, 2, 8, 160, "bf16", align=16, scale="token"), Case(40, 6, 60, 131, "fp32", ep=(2, 1)),
         Case(17, 2, 8, 256, "fp8", align=128, scale="block")]


@pytest.mark.parametrize("pick", ["narrowest", "middle", "widest"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_kernels_are_exact_with_configs_of_the_search_space(case, pick, device):
    def chosen(op, elem_bytes):
        space = tuning.search_space(op, case.H, case.M, case.k, elem_bytes)[1:]
        return {"narrowest": space[0], "middle": space[len(space) // 2], "widest": space[-1]}[pick]

    hidden, scale, ids, weights, emap = make_inputs(case, device, salt="tuning")
    with tuning.forced(chosen("permute", hidden.element_size()), "permute"):
        got = kernels.moe_permute(hidden, scale, ids, case.E, case.n_local, emap, case.align, case.fill)
    want = reference.moe_permute(hidden, scale, ids, case.E, case.n_local, emap, case.align, case.fill)
    local = reference.local_expert_of_routes(ids, case.E, emap)
    compare.assert_permute_matches(got, want, hidden, scale, ids, local)

    # unpermute: close to the reference, and bit-identical to the default config (tiling must not change the sums)
    expert_out = got[0] if case.dtype != "fp8" else got[0].to(torch.bfloat16)
    out, ref, default = (torch.empty(case.M, case.H, dtype=expert_out.dtype, device=device) for _ in range(3))
    with tuning.forced(chosen("unpermute", expert_out.element_size()), "unpermute"):
        kernels.moe_unpermute(out, expert_out, weights, got[3], got[2])
    reference.moe_unpermute(ref, expert_out, weights, got[3], got[2])
    compare.assert_close("unpermuted", out, ref)
    kernels.moe_unpermute(default, expert_out, weights, got[3], got[2])
    compare.assert_equal("unpermuted, tuned vs default config", out, default)


def test_merging_keeps_other_entries_and_never_overwrites_an_unreadable_file(config_dir):
    from pytest_moeperf.store import tuned

    a = {"BLOCK_T": 1, "BLOCK_H": 64, "num_warps": 2}
    b = {"BLOCK_T": 2, "BLOCK_H": 32, "num_warps": 2}
    write_configs(config_dir, "x.json", {"16": a, "2": a})
    tuned.merge(config_dir, "x.json", {2: b, 100: b}, "permute")
    data = json.loads((config_dir / "x.json").read_text())
    assert data["configs"] == {"2": b, "16": a, "100": b} and list(data["configs"]) == ["2", "16", "100"]
    # None: the default was not beaten at that batch size, so its entry goes; a file left empty goes too
    tuned.merge(config_dir, "x.json", {16: None, 3: None}, "permute")
    assert json.loads((config_dir / "x.json").read_text())["configs"] == {"2": b, "100": b}
    tuned.merge(config_dir, "x.json", {2: None, 100: None}, "permute")
    assert not (config_dir / "x.json").exists()
    (config_dir / "bad.json").write_text("{oops")
    written, errors = tuned.write_all([{"file": "bad.json", "op": "permute", "M": 1, "config": a, "kept": True}])
    assert written == [] and "bad.json" in errors[0] and (config_dir / "bad.json").read_text() == "{oops"


GEMM_A = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1, "num_warps": 4,
          "num_stages": 1}


def test_gemm_files_are_named_and_shaped_like_vllms(config_dir):
    from pytest_moeperf.store import tuned

    assert tuning.gemm_config_name(8, 14336, "NVIDIA_H100_80GB_HBM3", None, None) == \
        "E=8,N=14336,device_name=NVIDIA_H100_80GB_HBM3.json"
    assert tuning.gemm_config_name(256, 2048, "NVIDIA_H100_80GB_HBM3", "fp8_w8a8", [128, 128]) == \
        "E=256,N=2048,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128, 128].json"
    name = tuning.gemm_config_name(256, 2048, "cpu", "fp8_w8a8", [128, 128])
    # vLLM's own file (batch sizes at the top level, "triton_version" beside them) is read as it is
    b = dict(GEMM_A, BLOCK_SIZE_N=32)
    (config_dir / name).write_text(json.dumps({"triton_version": "3.4.0", "1": GEMM_A, "64": b}))
    cpu = torch.device("cpu")
    get = lambda M: tuning.gemm_launch_config(M, 8, 256, 2048, torch.float8_e4m3fn, "fp8_w8a8", [128, 128], cpu)  # noqa
    assert (get(1), get(64)) == (GEMM_A, b)
    assert get(20) == tuning.gemm_default(20, 256, [128, 128])
    assert get(5000) == tuning.gemm_default(5000, 256, [128, 128])
    tuned.merge(config_dir, name, {16: b}, "fused_experts")
    data = json.loads((config_dir / name).read_text())
    assert list(data) == ["triton_version", "1", "16", "64"] and data["16"] == b and data["1"] == GEMM_A


def test_gemm_configs_that_cannot_run_are_refused(config_dir):
    name = tuning.gemm_config_name(8, 64, "cpu", "fp8_w8a8", [128, 128])
    (config_dir / name).write_text(json.dumps({"1": dict(GEMM_A, BLOCK_SIZE_K=256)}))
    with pytest.raises(tuning.ConfigError, match="BLOCK_SIZE_K 256 must divide"):
        tuning.gemm_launch_config(1, 2, 8, 64, torch.float8_e4m3fn, "fp8_w8a8", [128, 128], torch.device("cpu"))
    (config_dir / name).write_text(json.dumps({"1": {"BLOCK_SIZE_M": 16}}))
    tuning.clear_cache()
    with pytest.raises(tuning.ConfigError, match="needs exactly BLOCK_SIZE_M, BLOCK_SIZE_N"):
        tuning.gemm_launch_config(1, 2, 8, 64, torch.float8_e4m3fn, "fp8_w8a8", [128, 128], torch.device("cpu"))


def test_gemm_search_space_is_vllms_pruned(monkeypatch):
    monkeypatch.setattr(_launch, "INTERPRETED", False)  # the GPU's space (the interpreter's is a smoke test)
    full = 5 * 4 * 3 * 4 * 2 * 4
    space = tuning.gemm_search_space(4096, 2, 8, 2, None)
    assert space[0] == tuning.gemm_default(4096, 8) and len(space) < full
    assert all(tuning.gemm_problem_with(c, 2, None) is None for c in space)
    assert {c["BLOCK_SIZE_K"] for c in space} == {64, 128, 256} and {c["num_stages"] for c in space} == {2, 3, 4, 5}
    block = tuning.gemm_search_space(4096, 8, 256, 1, [128, 128])
    assert {c["BLOCK_SIZE_K"] for c in block} == {64, 128}  # 256 would straddle a 128-column scale block
    small = tuning.gemm_search_space(1, 2, 8, 2, None)
    assert {c["BLOCK_SIZE_M"] for c in small} == {16}  # two routes: wider row blocks only hold padding


def test_the_standard_path_reads_its_own_configs_not_moe_unpermutes(config_dir, device):
    # moe_unpermute's tuned entries were shown faster for its own kernel variant and rows; the standard path's
    # reduce (another variant, over padded rows) runs the defaults unless a file of its own says otherwise
    M, H, k = 4, 64, 2
    name = tuning.config_name("unpermute", H, k, torch.float32, tuning.device_name(torch.device(device)))
    write_configs(config_dir, name, {str(M): {"BLOCK_T": 2, "BLOCK_H": 32, "num_warps": 2}})
    rows = torch.randn(M * k, H, device=device)
    inv = torch.randperm(M * k, device=device).to(torch.int32)
    weights = torch.rand(M, k, device=device)
    with tuning.recording() as read:
        kernels._moe_unpermute_and_reduce(torch.empty(M, H, device=device), rows, inv, weights, False)
        kernels.moe_unpermute(torch.empty(M, H, device=device), rows, weights, inv)
    assert [r.op for r in read] == ["unpermute_and_reduce", "unpermute"]
    assert not (config_dir / read[0].name).exists() and (config_dir / read[1].name).exists()
