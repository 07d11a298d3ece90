#include "dsv4/error.h"

namespace dsv4 {

void fail(const std::string& what) { throw Error(what); }

}  // namespace dsv4
