// The doctest main of the kv unit tests (resp_test, store_test, kv_session_test).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
