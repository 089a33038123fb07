// This library target exists only so that user-space crates can name this package as a
// build-dependency (cache invalidation); the programs are the `oxeye-ebpf` binary.
#![no_std]
