/*
 * An enum a library defines itself, as strata/job.h defines JobStatus:
 * qapi-schema-test.json names it in its 'library-enums' pragma, so the
 * generated code includes this header and checks the values.
 */
#ifndef TEST_LIB_FRUIT_H
#define TEST_LIB_FRUIT_H

typedef enum {
    TEST_FRUIT_APPLE,
    TEST_FRUIT_BLOOD_ORANGE,
    TEST_FRUIT__MAX,
} Fruit;

#endif
