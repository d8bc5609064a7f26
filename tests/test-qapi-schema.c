/*
 * The generator on tests/qapi-schema/qapi-schema-test.json: every scalar
 * type in both input modes with its error message, structs with bases,
 * unions (with a branch that has no members), alternates, lists, C-keyword
 * member names, marshallers (plain, boxed, 'any', failing), the command
 * table's flags, event emitters and the introspection data.  Run under
 * ASan (build-asan) this also checks the free functions.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/qmp.h"
#include "test-qapi-commands.h"
#include "test-qapi-events.h"
#include "test-qapi-visit.h"

/* ---- the test schema's handlers ---------------------------------------- */

static int nothing_calls;
static Drawing *last_drawing;

void qmp_test_nothing(GError **errp)
{
    nothing_calls++;
}

Derived *qmp_test_echo(const char *text, bool has_times, int64_t times,
                       bool has_colour, Colour colour, strList *tags,
                       GError **errp)
{
    Derived *d = g_new0(Derived, 1);
    d->id = g_strdup(text);
    d->has_tag_count = true;
    d->tag_count = 0;
    strList **tail = &d->names;
    for (; tags; tags = tags->next) {
        d->tag_count++;
        *tail = g_new0(strList, 1);
        (*tail)->value = g_strdup(tags->value);
        tail = &(*tail)->next;
    }
    for (int64_t i = 0; i < (has_times ? times : 1); i++) {
        intList *n = g_new0(intList, 1);
        n->value = has_colour ? (int64_t)colour : -1;
        n->next = d->list;
        d->list = n;
    }
    return d;
}

ShapeList *qmp_test_boxed(Shape *arg, GError **errp)
{
    /* Two copies of the argument, made through JSON. */
    ShapeList *l = NULL;
    for (int i = 0; i < 2; i++) {
        json_t *j = qapi_Shape_to_json(arg);
        ShapeList *n = g_new0(ShapeList, 1);
        n->value = qapi_Shape_from_json(j, errp);
        json_decref(j);
        n->next = l;
        l = n;
    }
    return l;
}

Layer *qmp_test_layer(Layer *arg, GError **errp)
{
    /* A copy of the argument, made through JSON. */
    json_t *j = qapi_Layer_to_json(arg);
    Layer *l = qapi_Layer_from_json(j, errp);
    json_decref(j);
    return l;
}

json_t *qmp_test_any(json_t *v, GError **errp)
{
    return json_pack("{sO}", "got", v);
}

void qmp_test_oob(GError **errp)
{
}

void qmp_test_fail(const char *msg, GError **errp)
{
    error_set_class(errp, STRATA_ERROR_DEVICE_NOT_FOUND, "%s", msg);
}

void qmp_test_drawing(Drawing *arg, GError **errp)
{
    json_t *j = qapi_Drawing_to_json(arg);
    qapi_free_Drawing(last_drawing);
    last_drawing = qapi_Drawing_from_json(j, errp);
    json_decref(j);
}

Base *qmp_test_named(const char *id, bool has_tag_count, int64_t tag_count,
                     GError **errp)
{
    Base *b = g_new0(Base, 1);
    b->id = g_strconcat(id, "!", NULL);
    b->has_tag_count = true;
    b->tag_count = has_tag_count ? tag_count * 2 : -1;
    return b;
}

char *qmp_test_text(int64_t n, GError **errp)
{
    return g_strdup_printf("%" G_GINT64_FORMAT " times", n);
}

static json_t *events;

void qmp_event_send(const char *event, json_t *data)
{
    json_t *e = json_pack("{s:s}", "event", event);
    if (data) {
        json_object_set_new(e, "data", data);
    }
    json_array_append_new(events, e);
}

/* ---- helpers ------------------------------------------------------------ */

static json_t *parse(const char *text)
{
    json_t *j = opts_parse_json(text, NULL);
    assert_non_null(j);
    return j;
}

static Scalars *scalars_json(const char *text, GError **errp)
{
    json_t *j = parse(text);
    Scalars *s = qapi_Scalars_from_json(j, errp);
    json_decref(j);
    return s;
}

static Scalars *scalars_keyval(const char *text, GError **errp)
{
    json_t *j = opts_parse_keyval(text, NULL, NULL);
    assert_non_null(j);
    Scalars *s = qapi_Scalars_from_keyval(j, errp);
    json_decref(j);
    return s;
}

#define GOOD_JSON "'s': 'x', 'i': 1, 'i8': 1, 'i16': 1, 'i32': 1, 'i64': 1, " \
    "'u8': 1, 'u16': 1, 'u32': 1, 'u64': 1, 'sz': 1, 'n': 1, 'b': true"
#define GOOD_KEYVAL "s=x,i=1,i8=1,i16=1,i32=1,i64=1,u8=1,u16=1,u32=1,u64=1," \
    "sz=1,n=1,b=on"

/* GOOD_JSON with one member replaced (JSON's later duplicate would fail). */
static void scalars_json_error(const char *member, const char *value,
                               const char *want)
{
    json_t *j = parse("{" GOOD_JSON "}");
    json_t *v = opts_parse_json(value, NULL);
    assert_non_null(v);
    json_object_set_new(j, member, v);
    GError *err = NULL;
    Scalars *s = qapi_Scalars_from_json(j, &err);
    json_decref(j);
    if (s) {
        fail_msg("%s=%s accepted, expected \"%s\"", member, value, want);
    }
    assert_string_equal(err->message, want);
    g_error_free(err);
}

static void scalars_keyval_error(const char *extra, const char *want)
{
    char *text = g_strdup_printf(GOOD_KEYVAL ",%s", extra);
    GError *err = NULL;
    Scalars *s = scalars_keyval(text, &err);
    if (s) {
        fail_msg("%s accepted, expected \"%s\"", text, want);
    }
    assert_string_equal(err->message, want);
    g_error_free(err);
    g_free(text);
}

/* ---- tests --------------------------------------------------------------- */

static void test_scalars_json(void **state)
{
    GError *err = NULL;
    Scalars *s = scalars_json("{'s': 'text', 'i': -9223372036854775808, "
        "'i8': -128, 'i16': 32767, 'i32': -2147483648, 'i64': 9223372036854775807, "
        "'u8': 255, 'u16': 65535, 'u32': 4294967295, 'u64': 18446744073709551615, "
        "'sz': 4096, 'n': 2.5, 'b': false, 'a': {'k': [1, null]}, 'nul': null, "
        "'c': 'light-blue'}", &err);
    if (err) {
        fail_msg("%s", err->message);
    }
    assert_string_equal(s->s, "text");
    assert_true(s->i == INT64_MIN);
    assert_int_equal(s->i8, -128);
    assert_int_equal(s->i16, 32767);
    assert_int_equal(s->i32, INT32_MIN);
    assert_true(s->i64 == INT64_MAX);
    assert_int_equal(s->u8, 255);
    assert_int_equal(s->u16, 65535);
    assert_int_equal(s->u32, UINT32_MAX);
    assert_true(s->u64 == UINT64_MAX);
    assert_int_equal(s->sz, 4096);
    assert_true(s->n == 2.5);
    assert_false(s->b);
    assert_true(json_is_object(s->a));
    assert_true(json_is_null(s->nul));
    assert_true(s->has_c);
    assert_int_equal(s->c, COLOUR_LIGHT_BLUE);
    assert_string_equal(Colour_str(s->c), "light-blue");
    assert_int_equal(Colour_parse("green"), COLOUR_GREEN);
    assert_int_equal(Colour_parse("purple"), -1);

    /* jansson holds no integer above INT64_MAX: such a uint64 is written as
     * a real (docs/qapi.md), which does not read back as an integer. */
    json_t *out = qapi_Scalars_to_json(s);
    assert_true(json_is_real(json_object_get(out, "u64")));
    json_decref(out);
    s->u64 = (uint64_t)INT64_MAX;
    out = qapi_Scalars_to_json(s);
    assert_string_equal(json_string_value(json_object_get(out, "c")), "light-blue");
    assert_true(json_integer_value(json_object_get(out, "i8")) == -128);
    assert_true(json_is_false(json_object_get(out, "b")));
    Scalars *again = qapi_Scalars_from_json(out, &err);
    assert_null(err);
    assert_true(again->i == INT64_MIN && again->u32 == UINT32_MAX);
    assert_true(again->u64 == (uint64_t)INT64_MAX);
    json_t *out2 = qapi_Scalars_to_json(again);
    assert_true(json_equal(out, out2));
    json_decref(out2);
    json_decref(out);
    qapi_free_Scalars(again);
    qapi_free_Scalars(s);

    /* Optional members left out: has_ flags false, pointers NULL. */
    s = scalars_json("{" GOOD_JSON "}", &err);
    assert_null(err);
    assert_false(s->has_c);
    assert_null(s->a);
    assert_null(s->nul);
    out = qapi_Scalars_to_json(s);
    assert_null(json_object_get(out, "c"));
    assert_null(json_object_get(out, "a"));
    json_decref(out);
    qapi_free_Scalars(s);
}

static void test_scalar_errors_json(void **state)
{
    scalars_json_error("s", "1", "Invalid parameter type for 's', expected: string");
    scalars_json_error("i", "1.5", "Invalid parameter type for 'i', expected: integer");
    scalars_json_error("i", "'1'", "Invalid parameter type for 'i', expected: integer");
    scalars_json_error("i8", "128", "Parameter 'i8' expects int8_t");
    scalars_json_error("i16", "-32769", "Parameter 'i16' expects int16_t");
    scalars_json_error("i32", "2147483648", "Parameter 'i32' expects int32_t");
    scalars_json_error("i64", "9223372036854775808",
                       "Invalid parameter type for 'i64', expected: integer");
    scalars_json_error("u8", "256", "Parameter 'u8' expects uint8_t");
    scalars_json_error("u16", "-1", "Parameter 'u16' expects uint16_t");
    scalars_json_error("u32", "true", "Parameter 'u32' expects uint64");
    scalars_json_error("u64", "'12'", "Parameter 'u64' expects uint64");
    scalars_json_error("sz", "'1k'", "Parameter 'sz' expects uint64");
    scalars_json_error("n", "'1'", "Invalid parameter type for 'n', expected: number");
    scalars_json_error("b", "1", "Invalid parameter type for 'b', expected: boolean");
    scalars_json_error("nul", "0", "Invalid parameter type for 'nul', expected: null");
    scalars_json_error("c", "'purple'", "Parameter 'c' does not accept value 'purple'");
    scalars_json_error("c", "3", "Invalid parameter type for 'c', expected: string");
    scalars_json_error("extra", "3", "Parameter 'extra' is unexpected");

    GError *err = NULL;
    assert_null(scalars_json("{'s': 'x'}", &err));
    assert_string_equal(err->message, "Parameter 'i' is missing");
    g_clear_error(&err);
    assert_null(scalars_json("[1]", &err));
    assert_string_equal(err->message,
                        "Invalid parameter type for '<anonymous>', expected: object");
    g_clear_error(&err);
}

static void test_scalars_keyval(void **state)
{
    GError *err = NULL;
    Scalars *s = scalars_keyval("s=a,,b,i=0x10,i8=-5,i16=010,i32=7,i64=-1,"
                                "u8=255,u16=0,u32=1,u64=-1,sz=1.5k,n=-2.25,b=yes,"
                                "c=green", &err);
    assert_null(err);
    assert_string_equal(s->s, "a,b");
    assert_int_equal(s->i, 16);
    assert_int_equal(s->i8, -5);
    assert_int_equal(s->i16, 8);
    assert_true(s->i64 == -1);
    assert_true(s->u64 == UINT64_MAX);     /* QEMU's unsigned parse wraps */
    assert_int_equal(s->sz, 1536);
    assert_true(s->n == -2.25);
    assert_true(s->b);
    assert_int_equal(s->c, COLOUR_GREEN);
    qapi_free_Scalars(s);

    static const char *const words[][2] = {
        { "on", "1" }, { "yes", "1" }, { "true", "1" }, { "y", "1" },
        { "off", "0" }, { "no", "0" }, { "false", "0" }, { "n", "0" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(words); i++) {
        char *t = g_strdup_printf("s=x,i=1,i8=1,i16=1,i32=1,i64=1,u8=1,u16=1,"
                                  "u32=1,u64=1,sz=1,n=1,b=%s", words[i][0]);
        s = scalars_keyval(t, &err);
        assert_null(err);
        assert_int_equal(s->b, words[i][1][0] == '1');
        qapi_free_Scalars(s);
        g_free(t);
    }
}

static void test_scalar_errors_keyval(void **state)
{
    scalars_keyval_error("i=abc", "Parameter 'i' expects integer");
    scalars_keyval_error("i=", "Parameter 'i' expects integer");
    scalars_keyval_error("i8=200", "Parameter 'i8' expects int8_t");
    scalars_keyval_error("u8=256", "Parameter 'u8' expects uint8_t");
    scalars_keyval_error("u64=x", "Parameter 'u64' expects integer");
    scalars_keyval_error("sz=1x", "Parameter 'sz' expects size");
    scalars_keyval_error("n=abc", "Invalid parameter type for 'n', expected: number");
    scalars_keyval_error("b=2", "Parameter 'b' expects 'on' or 'off'");
    scalars_keyval_error("c=purple", "Parameter 'c' does not accept value 'purple'");
    scalars_keyval_error("nul=", "Invalid parameter type for 'nul', expected: null");
    scalars_keyval_error("c.x=1", "Parameters 'c.*' are unexpected");
    scalars_keyval_error("zz=1", "Parameter 'zz' is unexpected");
}

/* An enum the library defines (pragma library-enums, lib-fruit.h): the
 * generated readers, writers and helpers use the library's constants. */
static void test_library_enum(void **state)
{
    (void)state;
    GError *err = NULL;
    json_t *j = parse("{'fruit': 'blood-orange', 'spare': ['apple']}");
    Basket *b = qapi_Basket_from_json(j, &err);
    json_decref(j);
    assert_non_null(b);
    assert_int_equal(b->fruit, TEST_FRUIT_BLOOD_ORANGE);
    assert_int_equal(b->spare->value, TEST_FRUIT_APPLE);
    assert_null(b->spare->next);
    assert_string_equal(Fruit_str(TEST_FRUIT_APPLE), "apple");
    assert_null(Fruit_str(TEST_FRUIT__MAX));
    assert_int_equal(Fruit_parse("blood-orange"), TEST_FRUIT_BLOOD_ORANGE);
    assert_int_equal(Fruit_parse("pear"), -1);

    json_t *out = qapi_Basket_to_json(b);
    char *text = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);
    assert_string_equal(text,
                        "{\"fruit\":\"blood-orange\",\"spare\":[\"apple\"]}");
    free(text);
    json_decref(out);
    qapi_free_Basket(b);

    j = parse("{'fruit': 'pear'}");
    assert_null(qapi_Basket_from_json(j, &err));
    json_decref(j);
    assert_string_equal(err->message,
                        "Parameter 'fruit' does not accept value 'pear'");
    g_error_free(err);
}

static void test_awkward_names(void **state)
{
    GError *err = NULL;
    json_t *j = parse("{'default': 3, 'unix': '/s', 'if': true, 'dashed-name': 'red'}");
    Awkward *a = qapi_Awkward_from_json(j, &err);
    assert_null(err);
    assert_int_equal(a->q_default, 3);
    assert_string_equal(a->q_unix, "/s");
    assert_true(a->has_q_if && a->q_if);
    assert_int_equal(a->dashed_name, COLOUR_RED);
    json_t *out = qapi_Awkward_to_json(a);
    assert_true(json_equal(out, j));
    json_decref(out);
    json_decref(j);
    qapi_free_Awkward(a);
    assert_int_equal(TEST_CIPHER_3DES, 0);
    assert_string_equal(Cipher_str(TEST_CIPHER_AES), "aes");
}

static void test_nested_names(void **state)
{
    GError *err = NULL;
    json_t *j = parse("{'id': 'd', 'list': [1, 2], 'inners': [{'x': 1}, "
                      "{'x': 2, 'deep': {'x': 3, 'deep': {}}}]}");
    assert_null(qapi_Derived_from_json(j, &err));
    assert_string_equal(err->message, "Parameter 'inners[1].deep.deep.x' is missing");
    g_clear_error(&err);
    json_decref(j);

    j = parse("{'id': 'd', 'list': [1, 'two']}");
    assert_null(qapi_Derived_from_json(j, &err));
    assert_string_equal(err->message,
                        "Invalid parameter type for 'list[1]', expected: integer");
    g_clear_error(&err);
    json_decref(j);

    j = opts_parse_keyval("id=d,list.0=1,inners.0.x=1,inners.1.x=2,"
                          "inners.1.deep.y=3", NULL, NULL);
    assert_true(opts_keyval_listify(j, NULL));
    assert_null(qapi_Derived_from_keyval(j, &err));
    assert_string_equal(err->message, "Parameter 'inners.1.deep.x' is missing");
    g_clear_error(&err);
    json_decref(j);

    /* A good one, with the base's members, both lists and the recursion. */
    j = parse("{'id': 'd', 'tag-count': 2, 'list': [3, 4], 'names': ['a'], "
              "'inner': {'x': 1, 'deep': {'x': 2}}, 'inners': []}");
    Derived *d = qapi_Derived_from_json(j, &err);
    assert_null(err);
    assert_string_equal(d->id, "d");
    assert_true(d->has_tag_count);
    assert_int_equal(d->list->next->value, 4);
    assert_string_equal(d->names->value, "a");
    assert_int_equal(d->inner->deep->x, 2);
    assert_null(d->inner->deep->deep);
    assert_null(d->inners);
    json_t *out = qapi_Derived_to_json(d);
    /* An empty optional list is NULL, and so is left out on output. */
    json_object_del(j, "inners");
    assert_true(json_equal(out, j));
    /* The base's own reader takes a Derived's members too. */
    Base *b = (Base *)d;
    assert_string_equal(b->id, "d");
    json_decref(out);
    json_decref(j);
    qapi_free_Derived(d);
}

static void test_unions(void **state)
{
    GError *err = NULL;
    json_t *j = parse("{'kind': 'box', 'label': 'b', 'w': 3, 'h': 4, 'fill': 'red'}");
    Shape *s = qapi_Shape_from_json(j, &err);
    assert_null(err);
    assert_int_equal(s->kind, SHAPE_KIND_BOX);
    assert_int_equal(s->u.box.w, 3);
    assert_true(s->u.box.has_fill);
    json_t *out = qapi_Shape_to_json(s);
    assert_true(json_equal(out, j));
    json_decref(out);
    json_decref(j);
    qapi_free_Shape(s);

    j = parse("{'kind': 'point'}");
    s = qapi_Shape_from_json(j, &err);
    assert_null(err);
    assert_int_equal(s->kind, SHAPE_KIND_POINT);
    qapi_free_Shape(s);
    json_decref(j);

    static const char *const bad[][2] = {
        { "{'kind': 'point', 'radius': 1}", "Parameter 'radius' is unexpected" },
        { "{'kind': 'circle'}", "Parameter 'radius' is missing" },
        { "{'kind': 'hexagon'}", "Parameter 'kind' does not accept value 'hexagon'" },
        { "{'label': 'x'}", "Parameter 'kind' is missing" },
        { "{'kind': 'box', 'w': 1, 'h': -1}", "Parameter 'h' expects uint32_t" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        j = parse(bad[i][0]);
        assert_null(qapi_Shape_from_json(j, &err));
        assert_string_equal(err->message, bad[i][1]);
        g_clear_error(&err);
        json_decref(j);
    }
}

static json_t *call(const char *name, const char *args, GError **errp);

/* A union whose branch is a union: both tags and all members flat. */
static void test_nested_unions(void **state)
{
    GError *err = NULL;
    json_t *j = parse("{'layer': 'shape', 'kind': 'box', 'label': 'b', "
                      "'w': 3, 'h': 4}");
    Layer *l = qapi_Layer_from_json(j, &err);
    assert_null(err);
    assert_int_equal(l->layer, LAYER_KIND_SHAPE);
    assert_int_equal(l->u.shape.kind, SHAPE_KIND_BOX);
    assert_string_equal(l->u.shape.label, "b");
    assert_int_equal(l->u.shape.u.box.h, 4);
    json_t *out = qapi_Layer_to_json(l);
    assert_true(json_equal(out, j));
    json_decref(out);
    json_decref(j);
    qapi_free_Layer(l);

    j = parse("{'layer': 'blank', 'opacity': 5}");
    l = qapi_Layer_from_json(j, &err);
    assert_null(err);
    assert_int_equal(l->u.blank.opacity, 5);
    qapi_free_Layer(l);
    json_decref(j);

    static const char *const bad[][2] = {
        { "{'layer': 'shape'}", "Parameter 'kind' is missing" },
        { "{'layer': 'shape', 'kind': 'hexagon'}",
          "Parameter 'kind' does not accept value 'hexagon'" },
        { "{'layer': 'shape', 'kind': 'point', 'opacity': 1}",
          "Parameter 'opacity' is unexpected" },
        { "{'layer': 'blank', 'kind': 'point'}",
          "Parameter 'kind' is unexpected" },
        { "{'layer': 'shape', 'kind': 'circle'}",
          "Parameter 'radius' is missing" },
        { "{'layer': 'round'}",
          "Parameter 'layer' does not accept value 'round'" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        j = parse(bad[i][0]);
        assert_null(qapi_Layer_from_json(j, &err));
        assert_non_null(err);
        assert_string_equal(err->message, bad[i][1]);
        g_clear_error(&err);
        json_decref(j);
    }

    /* Through the dispatcher: the boxed argument and the reply. */
    json_t *r = call("test-layer", "{'layer': 'shape', 'kind': 'circle', "
                     "'radius': 2.5}", &err);
    assert_null(err);
    json_t *want = parse("{'layer': 'shape', 'kind': 'circle', 'radius': 2.5}");
    assert_true(json_equal(r, want));
    json_decref(want);
    json_decref(r);
}

static void test_alternates(void **state)
{
    GError *err = NULL;
    json_t *j = parse("{'shapes': [{'kind': 'circle', 'radius': 1.5}, 'named', null], "
                      "'choice': false, 'weight': 3, 'cipher': '3des'}");
    Drawing *d = qapi_Drawing_from_json(j, &err);
    assert_null(err);
    ShapeOrNameList *l = d->shapes;
    assert_int_equal(l->value->type, QTYPE_QDICT);
    assert_true(l->value->u.shape.u.circle.radius == 1.5);
    assert_int_equal(l->next->value->type, QTYPE_QSTRING);
    assert_string_equal(l->next->value->u.name, "named");
    assert_int_equal(l->next->next->value->type, QTYPE_QNULL);
    assert_int_equal(d->choice->type, QTYPE_QBOOL);
    assert_false(d->choice->u.b);
    assert_int_equal(d->weight->type, QTYPE_QNUM);
    assert_true(d->weight->u.n == 3);
    assert_int_equal(d->cipher, TEST_CIPHER_3DES);
    json_t *out = qapi_Drawing_to_json(d);
    json_object_set_new(j, "weight", json_real(3));
    assert_true(json_equal(out, j));
    json_decref(out);
    json_decref(j);
    qapi_free_Drawing(d);

    static const char *const bad[][2] = {
        { "{'shapes': [5]}", "Invalid parameter type for 'null', expected: ShapeOrName" },
        { "{'shapes': [], 'choice': 'x'}",
          "Invalid parameter type for 'choice', expected: IntOrBool" },
        { "{'shapes': [], 'choice': 1.5}",
          "Invalid parameter type for 'choice', expected: integer" },
        { "{'shapes': [], 'weight': 'purple'}",
          "Parameter 'weight' does not accept value 'purple'" },
        { "{'shapes': [{'kind': 'box', 'w': 1}]}", "Parameter 'shapes[0].h' is missing" },
        { "{'shapes': 'x'}", "Invalid parameter type for 'shapes', expected: array" },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        j = parse(bad[i][0]);
        assert_null(qapi_Drawing_from_json(j, &err));
        assert_string_equal(err->message, bad[i][1]);
        g_clear_error(&err);
        json_decref(j);
    }

    /* Keyval: every scalar is a string, the schema picks the branch. */
    j = opts_parse_keyval("shapes.0=named,shapes.1.kind=point,choice=17,weight=red",
                          NULL, NULL);
    assert_true(opts_keyval_listify(j, NULL));
    d = qapi_Drawing_from_keyval(j, &err);
    assert_null(err);
    assert_string_equal(d->shapes->value->u.name, "named");
    assert_int_equal(d->shapes->next->value->u.shape.kind, SHAPE_KIND_POINT);
    assert_int_equal(d->choice->type, QTYPE_QNUM);
    assert_int_equal(d->choice->u.i, 17);
    assert_int_equal(d->weight->u.c, COLOUR_RED);
    qapi_free_Drawing(d);
    json_decref(j);
    j = opts_parse_keyval("shapes.0=x,choice=off", NULL, NULL);
    assert_true(opts_keyval_listify(j, NULL));
    d = qapi_Drawing_from_keyval(j, &err);
    assert_null(err);
    assert_int_equal(d->choice->type, QTYPE_QBOOL);
    qapi_free_Drawing(d);
    json_decref(j);
    j = opts_parse_keyval("shapes.0=x,choice=maybe", NULL, NULL);
    assert_true(opts_keyval_listify(j, NULL));
    assert_null(qapi_Drawing_from_keyval(j, &err));
    assert_string_equal(err->message, "Invalid parameter type for 'choice', expected: IntOrBool");
    g_clear_error(&err);
    json_decref(j);
}

static json_t *call(const char *name, const char *args, GError **errp)
{
    const QmpCommand *c = qmp_command_find(name);
    assert_non_null(c);
    json_t *a = parse(args);
    json_t *ret = NULL;
    bool ok = c->fn(a, &ret, errp);
    json_decref(a);
    assert_true(ok == (ret != NULL));
    return ret;
}

static void test_commands(void **state)
{
    GError *err = NULL;
    json_t *r = call("test-nothing", "{}", &err);
    assert_true(json_is_object(r) && !json_object_size(r));
    assert_int_equal(nothing_calls, 1);
    json_decref(r);

    r = call("test-echo", "{'text': 'hi', 'times': 2, 'colour': 'green', "
             "'tags': ['a', 'b', 'c']}", &err);
    assert_null(err);
    json_t *want = parse("{'id': 'hi', 'tag-count': 3, 'list': [1, 1], "
                         "'names': ['a', 'b', 'c']}");
    assert_true(json_equal(r, want));
    json_decref(want);
    json_decref(r);

    assert_null(call("test-echo", "{'times': 2}", &err));
    assert_string_equal(err->message, "Parameter 'text' is missing");
    g_clear_error(&err);
    assert_null(call("test-echo", "{'text': 'x', 'tags': ['a', 2]}", &err));
    assert_string_equal(err->message,
                        "Invalid parameter type for 'tags[1]', expected: string");
    g_clear_error(&err);
    assert_null(call("test-nothing", "{'x': 1}", &err));
    assert_string_equal(err->message, "Parameter 'x' is unexpected");
    g_clear_error(&err);

    r = call("test-boxed", "{'kind': 'circle', 'radius': 2}", &err);
    assert_null(err);
    assert_int_equal(json_array_size(r), 2);
    assert_true(json_number_value(json_object_get(json_array_get(r, 1), "radius")) == 2);
    json_decref(r);
    assert_null(call("test-boxed", "{'kind': 'circle'}", &err));
    assert_string_equal(err->message, "Parameter 'radius' is missing");
    g_clear_error(&err);

    r = call("test-any", "{'v': [1, 'x', {'y': null}]}", &err);
    want = parse("{'got': [1, 'x', {'y': null}]}");
    assert_true(json_equal(r, want));
    json_decref(want);
    json_decref(r);

    /* A handler's error reaches the caller with its class. */
    assert_null(call("test-fail", "{'msg': 'no node'}", &err));
    assert_true(g_error_matches(err, STRATA_ERROR, STRATA_ERROR_DEVICE_NOT_FOUND));
    assert_string_equal(err->message, "no node");
    g_clear_error(&err);

    r = call("test-text", "{'n': 3}", &err);
    assert_string_equal(json_string_value(r), "3 times");
    json_decref(r);

    r = call("test-named", "{'id': 'n', 'tag-count': 4}", &err);
    want = parse("{'id': 'n!', 'tag-count': 8}");
    assert_true(json_equal(r, want));
    json_decref(want);
    json_decref(r);
    r = call("test-named", "{'id': 'n'}", &err);
    assert_int_equal(json_integer_value(json_object_get(r, "tag-count")), -1);
    json_decref(r);
    assert_null(call("test-named", "{'tag-count': 1}", &err));
    assert_string_equal(err->message, "Parameter 'id' is missing");
    g_clear_error(&err);

    r = call("test-drawing", "{'shapes': ['a'], 'choice': 3}", &err);
    assert_null(err);
    json_decref(r);
    assert_string_equal(last_drawing->shapes->value->u.name, "a");
    qapi_free_Drawing(last_drawing);
    last_drawing = NULL;
}

static void test_command_table(void **state)
{
    assert_int_equal(qmp_commands_count, 10);
    for (size_t i = 1; i < qmp_commands_count; i++) {
        assert_true(strcmp(qmp_commands[i - 1].name, qmp_commands[i].name) < 0);
    }
    const QmpCommand *oob = qmp_command_find("test-oob");
    assert_int_equal(oob->flags, QMP_CMD_ALLOW_OOB | QMP_CMD_NO_SUCCESS_REPLY |
                                 QMP_CMD_UNSTABLE);
    assert_int_equal(qmp_command_find("test-echo")->flags, 0);
    assert_null(qmp_command_find("test-zzz"));
    assert_null(qmp_command_find("a"));
}

static void test_events(void **state)
{
    events = json_array();
    qapi_event_send_test_event("e1", true, 5, COLOUR_RED);
    qapi_event_send_test_event("e2", false, 0, COLOUR_GREEN);
    qapi_event_send_test_plain();
    qapi_event_send_test_named("b", false, 0);
    Shape box = { .kind = SHAPE_KIND_BOX, .u.box = { .w = 1, .h = 2 } };
    qapi_event_send_test_boxed(&box);
    json_t *want = parse("["
        "{'event': 'TEST_EVENT', 'data': {'id': 'e1', 'count': 5, 'colour': 'red'}},"
        "{'event': 'TEST_EVENT', 'data': {'id': 'e2', 'colour': 'green'}},"
        "{'event': 'TEST_PLAIN'},"
        "{'event': 'TEST_NAMED', 'data': {'id': 'b'}},"
        "{'event': 'TEST_BOXED', 'data': {'kind': 'box', 'w': 1, 'h': 2}}]");
    if (!json_equal(events, want)) {
        char *got = json_dumps(events, JSON_SORT_KEYS);
        fail_msg("events: %s", got);
    }
    json_decref(want);
    json_decref(events);
    events = NULL;
}

static json_t *entry(json_t *schema, const char *name)
{
    size_t i;
    json_t *e;
    json_array_foreach(schema, i, e) {
        if (!strcmp(json_string_value(json_object_get(e, "name")), name)) {
            return e;
        }
    }
    fail_msg("no '%s' in the introspection data", name);
    return NULL;
}

static const char *str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static void test_introspection(void **state)
{
    json_t *s = qmp_introspection();
    /* Each name once; commands and events first. */
    size_t i;
    json_t *e;
    GHashTable *names = g_hash_table_new(g_str_hash, g_str_equal);
    json_array_foreach(s, i, e) {
        assert_true(g_hash_table_add(names, (char *)str(e, "name")));
    }
    g_hash_table_destroy(names);

    json_t *oob = entry(s, "test-oob");
    assert_true(json_is_true(json_object_get(oob, "allow-oob")));
    assert_string_equal(json_string_value(json_array_get(json_object_get(oob, "features"), 0)),
                        "unstable");
    assert_null(json_object_get(entry(s, "test-echo"), "allow-oob"));

    /* test-boxed takes Shape: a union with all three cases, point empty. */
    json_t *shape = entry(s, str(entry(s, "test-boxed"), "arg-type"));
    assert_string_equal(str(shape, "meta-type"), "object");
    assert_string_equal(str(shape, "tag"), "kind");
    json_t *vars = json_object_get(shape, "variants");
    assert_int_equal(json_array_size(vars), 3);
    json_t *point = json_array_get(vars, 2);
    assert_string_equal(str(point, "case"), "point");
    assert_int_equal(json_array_size(json_object_get(entry(s, str(point, "type")),
                                                     "members")), 0);
    json_t *label = json_array_get(json_object_get(shape, "members"), 1);
    assert_string_equal(str(label, "name"), "label");
    assert_string_equal(str(label, "type"), "str");
    assert_true(json_is_null(json_object_get(label, "default")));
    /* test-boxed returns [Shape]: an array type named after the element. */
    json_t *ret = entry(s, str(entry(s, "test-boxed"), "ret-type"));
    assert_string_equal(str(ret, "meta-type"), "array");
    assert_string_equal(str(ret, "element-type"), str(shape, "name"));

    /* test-layer takes Layer: its 'shape' case is the union Shape itself,
     * as QEMU describes MigrationAddress's 'socket' (SocketAddress). */
    json_t *layer = entry(s, str(entry(s, "test-layer"), "arg-type"));
    assert_string_equal(str(layer, "tag"), "layer");
    json_t *lshape = json_array_get(json_object_get(layer, "variants"), 0);
    assert_string_equal(str(lshape, "case"), "shape");
    assert_string_equal(str(lshape, "type"), str(shape, "name"));

    /* Integer widths and size fold into 'int'; any and null are built-ins. */
    json_t *drawing = entry(s, str(entry(s, "test-drawing"), "arg-type"));
    json_t *shapes = json_array_get(json_object_get(drawing, "members"), 0);
    json_t *alt = entry(s, str(entry(s, str(shapes, "type")), "element-type"));
    assert_string_equal(str(alt, "meta-type"), "alternate");
    assert_int_equal(json_array_size(json_object_get(alt, "members")), 3);
    assert_string_equal(str(json_array_get(json_object_get(alt, "members"), 2), "type"),
                        "null");
    assert_string_equal(str(entry(s, "int"), "json-type"), "int");
    assert_string_equal(str(entry(s, "null"), "json-type"), "null");

    json_t *ev = entry(s, "TEST_BOXED");
    assert_string_equal(str(ev, "meta-type"), "event");
    assert_string_equal(json_string_value(json_array_get(json_object_get(ev, "features"), 0)),
                        "deprecated");
    json_t *cipher = json_array_get(json_object_get(drawing, "members"), 3);
    json_t *en = entry(s, str(cipher, "type"));
    assert_string_equal(json_string_value(json_array_get(json_object_get(en, "values"), 0)),
                        "3des");
    json_decref(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars_json),
        cmocka_unit_test(test_scalar_errors_json),
        cmocka_unit_test(test_scalars_keyval),
        cmocka_unit_test(test_scalar_errors_keyval),
        cmocka_unit_test(test_library_enum),
        cmocka_unit_test(test_awkward_names),
        cmocka_unit_test(test_nested_names),
        cmocka_unit_test(test_unions),
        cmocka_unit_test(test_nested_unions),
        cmocka_unit_test(test_alternates),
        cmocka_unit_test(test_commands),
        cmocka_unit_test(test_command_table),
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_introspection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
