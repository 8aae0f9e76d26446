/*
 * Runs afn_decode under AddressSanitizer on buffers that are exactly as long
 * as their contents (one malloc each), so that reading one byte past the end
 * of a buffer is caught.  Input on stdin: records of a u32 length and bytes.
 * Built and run by tests/test_fastparse_differential.py; PRELUDE names the
 * header holding build_ffi.py's prelude.
 */
#include PRELUDE
#include <stdio.h>
#include <stdlib.h>
#include FASTPATH

int main(void)
{
    uint32_t n;
    long count = 0;

    while (fread(&n, 4, 1, stdin) == 1) {
        unsigned char *b = malloc(n ? n : 1);
        size_t cap = n / FAN_EVENT_METADATA_LEN + 1, used, stop;
        struct afn_event *out = malloc(cap * sizeof *out);
        long r;

        if (b == NULL || out == NULL || (n && fread(b, 1, n, stdin) != n))
            return 2;
        r = afn_decode(b, n, out, cap, 0, NULL, 0, &used, &stop);
        if (r < 0 || stop != n) {
            fprintf(stderr, "buffer %ld: returned %ld, stopped at %zu of %u\n", count, r, stop, n);
            return 1;
        }
        /* An entry array too small for the buffer must stop the walk, not overrun. */
        r = afn_decode(b, n, out, cap / 2, 0, NULL, 0, &used, &stop);
        if (r > (long)(cap / 2))
            return 1;
        free(out);
        free(b);
        count++;
    }
    printf("%ld buffers\n", count);
    return 0;
}
