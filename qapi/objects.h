/*
 * The user-creatable objects of the daemon (object-add, --object): their
 * registry, shared by the object, qom and block commands of qapi/.
 * Private to the QMP layer.
 */
#ifndef QAPI_OBJECTS_H
#define QAPI_OBJECTS_H

#include <glib.h>
#include "strata/iothread.h"
#include "strata/throttle.h"
#include "qapi-types.h"

typedef struct MemoryBackend MemoryBackend;

typedef struct UserObject {
    char *id;
    ObjectType type;
    IOThread *iothread;        /* type iothread */
    SecretProperties secret;   /* type secret: the properties as set */
    bool secret_base64;
    ThrottleGroup *throttle;   /* type throttle-group */
    MemoryBackend *memory;     /* types memory-backend-* */
} UserObject;

UserObject *user_object_find(const char *id);
/*
 * The iothread a QOM path names, partial or absolute, as QEMU's
 * iothread_by_id() finds it (x-blockdev-set-iothread, exports).
 */
UserObject *user_iothread_by_path(const char *path);
/*
 * For ids id_wellformed() refuses (strata/id.h), a command line adds the
 * hint to object-add's
 * "Parameter 'id' expects an identifier" (QMP replies carry no hints).
 */
#define USER_OBJECT_ID_HINT "Identifiers consist of letters, digits, " \
    "'-', '.', '_', starting with a letter."
/* The objects in the order QEMU's /objects container iterates its children. */
GPtrArray *user_objects_in_qom_order(void);
/*
 * QEMU creates its /objects container the first time something looks
 * there (object-add past its property checks, object-del, an iothread
 * looked up by x-blockdev-set-iothread); qom paths see it only from then on.
 */
void user_objects_root_touch(void);
bool user_objects_root_exists(void);
/*
 * throttle-group (qapi/throttle-object.c): the configuration the
 * properties of object-add give (checked as QEMU's setters and completion
 * check them); qom-get and qom-set of a property ("limits", "x-...").
 */
bool throttle_object_config(ThrottleGroupProperties *p, ThrottleConfig *cfg,
                            GError **errp);
json_t *throttle_object_get(UserObject *o, const char *property);
bool throttle_object_set(UserObject *o, const char *property, json_t *value,
                         GError **errp);

/*
 * memory-backend-memfd and memory-backend-file (qapi/memory-backend.c):
 * the checks QEMU's property setters make (before the object is named),
 * the backend (mapped and registered as a RAM block), whether object-del
 * may delete it (not while a migration uses it), and its end.
 */
bool memory_backend_setters_check(ObjectOptions *arg, GError **errp);
MemoryBackend *memory_backend_new(const char *id, ObjectOptions *arg,
                                  GError **errp);
bool memory_backend_can_delete(MemoryBackend *mb, const char *id,
                               GError **errp);
void memory_backend_free(MemoryBackend *mb);
/* qom-get and qom-set of a property qom-list lists for a backend */
json_t *memory_backend_qom_get(UserObject *o, const char *property);
bool memory_backend_qom_set(UserObject *o, const char *property,
                            json_t *value, GError **errp);

/* Delete every object (at exit). */
void user_objects_cleanup(void);

#endif
