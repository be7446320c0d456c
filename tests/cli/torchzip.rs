//! PyTorch zip checkpoints (`torch.save`): each storage's dtype is read from `data.pkl` by a
//! walk over its opcodes (never unpickling), so a bf16 checkpoint gets byte planes like a
//! safetensors file, and steps get deltas; everything restores byte-identical.

use tvault_workload::Scenario;

use crate::testenv::{num, sources_manifest, text, TestEnv};

const SIZE: u64 = 2 << 20;

#[test]
fn a_bf16_torch_save_checkpoint_is_stored_as_byte_planes() {
    let env = TestEnv::with_repo();
    let dir = env.checkpoint("src/run", Scenario::Torchzip, SIZE, 5, 0);
    let report = env.backup(&[&dir], &[]);
    let planes = num(&report["stored"], "byte_planes");
    let added = num(&report, "bytes_added");
    assert!(
        planes * 10 >= SIZE * 9,
        "most of the checkpoint should be stored as byte planes: {report:#}"
    );
    assert!(
        added * 100 <= SIZE * 72,
        "bf16 weights as byte planes take about 0.67 of their size, not {added}: {report:#}"
    );
    env.assert_restores(&text(&report, "id"), &sources_manifest(&[&dir]));
}
