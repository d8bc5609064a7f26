/*
 * What the NBD client driver (block/drivers/nbd.c) asks of the program.
 */
#ifndef STRATA_NBD_CLIENT_H
#define STRATA_NBD_CLIENT_H

#include <stdbool.h>

/*
 * Whether an object (of any type) has this id.  strata has no TLS
 * credentials objects, so tls-creds is always refused; QEMU's message
 * says whether the id names no object ("No TLS credentials with id") or
 * one of another type ("is not TLS credentials").  Secret objects are
 * known to the library; a program with other objects (the daemon's
 * iothreads, throttle groups...) tells the driver about them here.
 */
typedef bool NbdObjectExists(const char *id);
void nbd_client_set_object_exists(NbdObjectExists *fn);

#endif
