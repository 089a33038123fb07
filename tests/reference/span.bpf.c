// SPDX-License-Identifier: GPL-2.0
// The span benchmark's C reference (tests/benches/spans.rs): the textbook syscall span, what
// oxeye's `syscall:` source is measured against. The `syscalls:` tracepoint pair of one
// syscall, the entry time in a hash keyed by thread, an 80-byte record per span in a BPF ring
// buffer with adaptive wakeup (force a wakeup only when 256 KiB wait; the consumer also polls
// on a timer). Built by the benchmark with Debian's clang and libbpf headers:
//   clang -O2 -g -target bpf -I/usr/include/$(uname -m)-linux-gnu -c span.bpf.c -o span.bpf.o
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// Set by the loader: only this process is traced.
const volatile __u32 target_tgid = 0;

struct span {
	__u64 pid_tgid;
	__u64 start_ns;
	__u64 end_ns;
	__s64 ret;
	__u64 cgroup;
	__u32 cpu;
	__u32 syscall;
	char comm[16];
	__u64 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, __u64);
} starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} spans SEC(".maps");

// syscalls:sys_exit_*: common fields (8), __syscall_nr (4 + 4 padding), ret (8).
struct exit_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

SEC("tracepoint/syscalls/sys_enter_getppid")
int ref_enter(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if ((__u32)(id >> 32) != target_tgid)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	bpf_map_update_elem(&starts, &id, &now, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_getppid")
int ref_exit(struct exit_args *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if ((__u32)(id >> 32) != target_tgid)
		return 0;
	__u64 *start = bpf_map_lookup_elem(&starts, &id);
	if (!start)
		return 0;
	struct span *s = bpf_ringbuf_reserve(&spans, sizeof(*s), 0);
	if (s) {
		s->pid_tgid = id;
		s->start_ns = *start;
		s->end_ns = bpf_ktime_get_ns();
		s->ret = ctx->ret;
		s->cgroup = bpf_get_current_cgroup_id();
		s->cpu = bpf_get_smp_processor_id();
		s->syscall = ctx->nr;
		bpf_get_current_comm(s->comm, sizeof(s->comm));
		long wake = bpf_ringbuf_query(&spans, BPF_RB_AVAIL_DATA) >= (256 << 10)
			? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
		bpf_ringbuf_submit(s, wake);
	}
	bpf_map_delete_elem(&starts, &id);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
