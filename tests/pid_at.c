/* pid_at PID [--hold] PROG ARGS...: run PROG as pid PID (clone3's set_tid;
 * root).  Without --hold, waits for it and exits with its status; with
 * --hold, prints its pid, waits for standard input to close, then kills and
 * reaps it.  Exit 3 if PID is taken.  A test helper of
 * tests/test_drain_exitlog.py (pid reuse, made to happen at once). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    pid_t want = (pid_t)atoi(argv[1]);
    int hold = strcmp(argv[2], "--hold") == 0;
    char **prog = argv + 2 + hold;
    struct clone_args a;
    memset(&a, 0, sizeof a);
    pid_t tid[1] = {want};
    a.set_tid = (uint64_t)(uintptr_t)tid;
    a.set_tid_size = 1;
    a.exit_signal = SIGCHLD;
    long r = syscall(SYS_clone3, &a, sizeof a);
    if (r < 0)
        return errno == EEXIST ? 3 : 2;
    if (r == 0) {
        execvp(prog[0], prog);
        _exit(127);
    }
    int st = 0;
    if (hold) {
        printf("%ld\n", r);
        fflush(stdout);
        char c;
        while (read(0, &c, 1) > 0)
            ;
        kill((pid_t)r, SIGKILL);
        waitpid((pid_t)r, &st, 0);
        return 0;
    }
    waitpid((pid_t)r, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
