// Everything skein offers, in one include.
#pragma once

#include <skein/channel.hpp>
#include <skein/coroutine.hpp>
#include <skein/debug.hpp>
#include <skein/generator.hpp>
#include <skein/net.hpp>
#include <skein/run.hpp>
#include <skein/runtime.hpp>
#include <skein/stack.hpp>
#include <skein/sync.hpp>
#include <skein/task.hpp>
#include <skein/task_group.hpp>
#include <skein/time.hpp>
#include <skein/timeout.hpp>
#include <skein/version.hpp>
