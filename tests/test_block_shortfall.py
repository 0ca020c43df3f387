"""``block`` removes whole blocks, so a target between two block counts is not reached exactly:
the report says so (requested sparsity, reached sparsity and a sentence in ``totals``), and says
nothing when a whole number of blocks is the target."""
import pytest

import tiny_families
from core.criteria import prunable_layers
from core.engine import prune
from core.spec import PruneSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def _block_weights(transformer) -> tuple[list[int], int]:
    """Each transformer block's prunable weights and all prunable weights, counted on the dense model."""
    layers = prunable_layers(transformer)
    blocks = [sum(m.weight.numel() for n, m in layers.items() if n.startswith(f"transformer_blocks.{i}."))
              for i in range(len(transformer.transformer_blocks))]
    return blocks, sum(m.weight.numel() for m in layers.values())


def _block_prune(name: str, sparsity: float):
    pipeline = tiny_families.build(name)
    result = prune(pipeline, PruneSpec(criterion="magnitude", granularity="block", sparsity=sparsity))
    return pipeline, result


@pytest.mark.parametrize("name, blocks_removed, reached_text", [("dit", 2, "66.7"), ("sd3", 1, "38.1")])
def test_block_reports_the_sparsity_it_reaches_instead_of_the_target(name, blocks_removed, reached_text):
    pipeline, result = _block_prune(name, 0.5)
    blocks, total = _block_weights(pipeline.transformer)
    totals = result.report.totals
    assert len(pipeline.transformer.transformer_blocks) - len(result.pipeline.transformer.transformer_blocks) == blocks_removed
    # the removed blocks are equal in size: the reached sparsity is their share of the prunable weights
    assert totals["sparsity"] == pytest.approx(blocks_removed * blocks[0] / total)
    assert totals["sparsity"] == pytest.approx({"dit": 2 / 3, "sd3": 8 / 21}[name])
    assert totals["target_sparsity"] == 0.5
    assert totals["sparsity_shortfall"] == (
        f"block: asked for 50 % of the prunable parameters, removing whole blocks reaches {reached_text} % "
        "(the nearest whole number of blocks)")


@pytest.mark.parametrize("name", ["dit", "sd3"])
def test_block_target_of_whole_blocks_reports_no_shortfall(name):
    dense = tiny_families.build(name)
    blocks, total = _block_weights(dense.transformer)
    one_block = blocks[0] / total  # block 0 is removable in both (SD3 keeps its last, context-only block)
    _, result = _block_prune(name, one_block)
    totals = result.report.totals
    assert totals["sparsity"] == pytest.approx(one_block)
    assert totals["target_sparsity"] == one_block
    assert totals["sparsity_shortfall"] is None


def test_a_granularity_that_reaches_the_target_reports_no_shortfall():
    result = prune(tiny_families.build("dit"), PruneSpec(criterion="magnitude", granularity="unstructured", sparsity=0.5))
    assert result.report.totals["sparsity"] == pytest.approx(0.5) and result.report.totals["sparsity_shortfall"] is None
