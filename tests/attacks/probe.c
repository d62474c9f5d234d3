/* What a hostile base image's binary tries inside a run step; one line per attempt: NAME RESULT.
 * RESULT is "ok" when the attempt succeeded (an escape or a privilege the sandbox must not give)
 * or the errno name it failed with. Built static by tests/attacks/test_sandbox_attacks.py. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static const char *name(int err) {
    switch (err) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case EROFS: return "EROFS";
    case ENOSYS: return "ENOSYS";
    case ENOENT: return "ENOENT";
    case EINVAL: return "EINVAL";
    case EBUSY: return "EBUSY";
    case ENXIO: return "ENXIO";
    default: return "other";
    }
}

static void report(const char *what, int rc) { printf("%s %s\n", what, rc >= 0 ? "ok" : name(errno)); }

int main(int argc, char **argv) {
    const char *secret = argc > 1 ? argv[1] : "/run/secrets/token";
    /* the host root's inode through a forged file handle (the "shocker" escape) */
    struct { unsigned int bytes; int type; unsigned char h[8]; } fh = {8, 1, {2, 0, 0, 0, 0, 0, 0, 0}};
    int fd = open("/", O_RDONLY);
    report("open_by_handle_at", (int)syscall(SYS_open_by_handle_at, fd, &fh, O_RDONLY));
    char hbuf[sizeof(unsigned int) * 2 + 128];
    int mnt;
    ((unsigned int *)hbuf)[0] = 128;
    report("name_to_handle_at", (int)syscall(SYS_name_to_handle_at, AT_FDCWD, "/", hbuf, &mnt, 0));
    mkdir("/mnt-probe", 0755);
    report("mount_tmpfs", mount("none", "/mnt-probe", "tmpfs", 0, NULL));
    report("mount_sysfs", mount("sysfs", "/mnt-probe", "sysfs", 0, NULL));
    report("remount_secret_rw", mount(NULL, "/run/secrets", NULL, MS_REMOUNT | MS_BIND, NULL));
    report("remount_hosts_rw", mount(NULL, "/etc/hosts", NULL, MS_REMOUNT | MS_BIND, NULL));
    report("remount_root_dev", mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND, NULL));
    report("umount_proc", umount2("/proc", MNT_DETACH));
    int s = open(secret, O_WRONLY | O_TRUNC);
    report("write_secret", s);
    int sys = open("/proc/sys/kernel/hostname", O_WRONLY);
    report("write_proc_sys", sys >= 0 ? (int)write(sys, "x", 1) : -1);
    report("write_sysrq", open("/proc/sysrq-trigger", O_WRONLY));
    report("mknod_block", mknod("/blk-probe", S_IFBLK | 0600, makedev(8, 0)));
    int c = mknod("/chr-probe", S_IFCHR | 0600, makedev(1, 3));
    report("mknod_char", c);
    report("open_made_char", c == 0 ? open("/chr-probe", O_RDWR) : -1);
    report("unshare_user", unshare(CLONE_NEWUSER));
    report("unshare_mount", unshare(CLONE_NEWNS));
    report("clone3", (int)syscall(SYS_clone3, NULL, 0));
    report("setns", (int)syscall(SYS_setns, fd, 0));
    report("bpf", (int)syscall(SYS_bpf, 0, NULL, 0));
    report("keyctl", (int)syscall(SYS_keyctl, 0, 0, 0, 0, 0));
    report("kexec_load", (int)syscall(SYS_kexec_load, 0, 0, NULL, 0));
    report("init_module", (int)syscall(SYS_init_module, NULL, 0, ""));
    report("chroot", chroot("/"));
    char buf[16];
    int k = open("/proc/timer_list", O_RDONLY); /* present on every kernel; masked like /proc/kcore */
    ssize_t n = k >= 0 ? read(k, buf, sizeof buf) : -1;
    printf("timer_list_bytes %zd\n", n);
    int u = open("/umask-probe", O_CREAT | O_WRONLY | O_EXCL, 0666);
    struct stat st;
    if (u >= 0 && fstat(u, &st) == 0) printf("created_mode %o\n", st.st_mode & 07777);
    FILE *status = fopen("/proc/self/status", "r");
    char line[256];
    while (status && fgets(line, sizeof line, status))
        if (!strncmp(line, "CapEff:", 7) || !strncmp(line, "CapBnd:", 7) || !strncmp(line, "NoNewPrivs:", 11)
            || !strncmp(line, "Seccomp:", 8))
            printf("%s", line);
    return 0;
}
