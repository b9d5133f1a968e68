/*
 * LD_PRELOAD shim for Debian's user-mode-linux 6.1 on hosts whose XSAVE area is larger than UML
 * expects (CPUs with AMX: 10752+ bytes of user xstate against UML's 2696).
 *
 * UML keeps each guest process's FPU state in a fixed buffer and restores it with
 * ptrace(PTRACE_SETREGSET, NT_X86_XSTATE). Since Linux 5.x the host refuses (EFAULT) any SETREGSET
 * that is not exactly the full user xstate size, so the guest's init dies at its first context switch
 * ("ptrace set fp regs failed, errno = 14"). Here a short SETREGSET is completed: the target's current
 * full state is read, UML's bytes are laid over its start (x87/SSE/AVX/AVX-512/PKRU and the header that
 * says which of them are valid), and the whole buffer is written back. The components past UML's
 * buffer (AMX tile state) are ones a guest process cannot enable, so leaving them as they are loses
 * nothing. On hosts where the sizes agree, every call passes through unchanged.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef long (*ptrace_fn)(int, pid_t, void *, void *);

/* UML's tracer is single-threaded: one scratch buffer serves every call. */
static unsigned char full[65536] __attribute__((aligned(64)));

long ptrace(enum __ptrace_request req, ...)
{
	static ptrace_fn real;
	va_list ap;
	va_start(ap, req);
	pid_t pid = va_arg(ap, pid_t);
	void *addr = va_arg(ap, void *);
	void *data = va_arg(ap, void *);
	va_end(ap);
	if (!real)
		real = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
	if (req == PTRACE_SETREGSET && (long)addr == NT_X86_XSTATE && data) {
		struct iovec *in = data;
		struct iovec whole = { full, sizeof full };
		if (real(PTRACE_GETREGSET, pid, addr, &whole) == 0 && whole.iov_len > in->iov_len) {
			memcpy(full, in->iov_base, in->iov_len);
			return real(req, pid, addr, &whole);
		}
	}
	return real(req, pid, addr, data);
}
