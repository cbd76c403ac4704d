// skein's fiber-aware I/O in one include: addresses and resolution, sockets, the buffered
// reader, run_blocking and the connection server.
#pragma once

#include <skein/address.hpp>
#include <skein/blocking.hpp>
#include <skein/buffered_reader.hpp>
#include <skein/net_error.hpp>
#include <skein/server.hpp>
#include <skein/socket.hpp>
