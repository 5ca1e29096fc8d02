//! The store's limiter: what one policy call may take, summed over the whole component.
//!
//! wasmtime's `StoreLimits` caps each linear memory on its own, and its default store allows
//! 10 000 instances, memories and tables. A component is many core instances, each of which
//! may declare a memory: 32 memories of 60 MiB each pass a 64 MiB per-memory cap and take
//! 1.9 GiB in one call. So the counts are capped here (a policy built by `cargo` needs 3 core
//! instances, 1 memory and 2 tables), and the memory cap applies to the sum of every memory's
//! size, which `StoreLimits` cannot express: it sees one memory at a time.

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// Core instances one call may create (a `cargo`-built policy has 3).
pub const MAX_INSTANCES: usize = 16;
/// Linear memories one call may create (a `cargo`-built policy has 1).
pub const MAX_MEMORIES: usize = 4;
/// Tables one call may create (a `cargo`-built policy has 2).
pub const MAX_TABLES: usize = 8;
/// Elements of one table.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The store's data: the limiter, nothing else (no WASI context: nothing is granted).
pub struct Sandbox {
    counts: StoreLimits,
    /// Cap of the sum of every linear memory's size, in bytes.
    pub(super) memory_cap: usize,
    /// The sum of every linear memory's size now, in bytes.
    memory_total: usize,
    /// The last growth allowed, taken back if the growth then fails.
    last_growth: usize,
    /// Whether a growth was refused for the cap (the call fails with `MemoryCap`).
    pub(super) memory_cap_hit: bool,
}

impl Sandbox {
    /// A limiter for one call with `memory_cap` bytes in all.
    pub fn new(memory_cap: usize) -> Sandbox {
        let counts = StoreLimitsBuilder::new()
            .memory_size(memory_cap)
            .table_elements(MAX_TABLE_ELEMENTS)
            .instances(MAX_INSTANCES)
            .memories(MAX_MEMORIES)
            .tables(MAX_TABLES)
            .build();
        Sandbox {
            counts,
            memory_cap,
            memory_total: 0,
            last_growth: 0,
            memory_cap_hit: false,
        }
    }
}

impl ResourceLimiter for Sandbox {
    /// Called for every memory's creation too (`current` 0), so the total covers them all.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let total = self.memory_total.saturating_add(growth);
        let allowed =
            total <= self.memory_cap && self.counts.memory_growing(current, desired, maximum)?;
        self.memory_cap_hit |= !allowed;
        if allowed {
            self.memory_total = total;
            self.last_growth = growth;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_total -= std::mem::take(&mut self.last_growth);
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.counts.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.counts.instances()
    }

    fn tables(&self) -> usize {
        self.counts.tables()
    }

    fn memories(&self) -> usize {
        self.counts.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_cap_applies_to_the_sum_of_all_memories() {
        let mut sandbox = Sandbox::new(64 * MIB);
        assert!(sandbox.memory_growing(0, 60 * MIB, None).unwrap());
        // A second memory under the cap on its own, over it with the first.
        assert!(!sandbox.memory_growing(0, 60 * MIB, None).unwrap());
        assert!(sandbox.memory_cap_hit);
        assert!(sandbox.memory_growing(60 * MIB, 64 * MIB, None).unwrap());
        assert!(!sandbox.memory_growing(0, 64 << 10, None).unwrap());
    }

    #[test]
    fn a_failed_growth_is_given_back() {
        let mut sandbox = Sandbox::new(64 * MIB);
        assert!(sandbox.memory_growing(0, 40 * MIB, None).unwrap());
        sandbox
            .memory_grow_failed(wasmtime::Error::msg("over its maximum"))
            .unwrap();
        assert!(sandbox.memory_growing(0, 60 * MIB, None).unwrap());
        assert!(!sandbox.memory_cap_hit);
    }

    #[test]
    fn counts_are_capped() {
        let sandbox = Sandbox::new(MIB);
        assert_eq!(
            (sandbox.instances(), sandbox.memories(), sandbox.tables()),
            (MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES)
        );
    }
}
