//! The `tessera` command: everything lives in the library; see [`tessera::cli`].

/// mimalloc keeps the large per-batch buffers (tiles, model outputs) mapped between batches,
/// where glibc's allocator returned them to the kernel and page-faulted them back every batch.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(tessera::cli::main());
}
