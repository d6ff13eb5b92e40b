#pragma once
// The fitted schemas of the request target (fuzz_request.cpp), shared with the seed
// generator (gen_corpus.cpp) so that the committed seeds of fuzz_schema_json are these
// schemas' to_json() and the request seeds match their columns.
#include <string>
#include <vector>

#include "xrec/data/readers.hpp"
#include "xrec/data/schema.hpp"

namespace xrec_fuzz {

namespace xd = xrec::data;

/// The columns of the main schema, and the rows it is fitted on.
inline const std::vector<std::string> header = {"label", "price", "age", "user", "item", "shop", "tags", "hist", "ts"};
inline const std::vector<std::vector<std::string>> train_rows = {
    {"1", "3.5", "20", "u1", "i1", "s1", "a|b", "i1:1,i2:0.5", "100"},
    {"0", "12", "", "u2", "i2", "s1", "b", "", "101"},
    {"1", "-4", "41", "u1", "i3", "s2", "a|c|d", "i3:2", "102"},
    {"0", "0", "33", "u3", "i1", "s3", "", "i1:1,i1:1", "103"},
};

inline xd::schema fit_main() {
    auto s = xd::schema::from_spec(
        "label=label(binarize=0.5); price=dense(log,standard); age=dense(fill=30); user=sparse; user=group;"
        "item=sparse(hash=64); shop=sparse(grow=2,admit=2); tags=seq(sep=pipe,max_len=3,pool=mean);"
        "hist=seq(sep=comma,weighted,share=item); ts=time");
    s.bind(header);
    s.start_fit();
    for (auto& r : train_rows) {
        xd::request_record rr(r);
        s.fit_record(rr.record());
    }
    s.finish_fit();
    // grow the "shop" table in train mode so that the serving lookups find admitted values
    xd::encoded_row<float> row;
    for (auto& r : train_rows) {
        xd::request_record rr(r);
        s.encode(rr.record(), row);
    }
    return s;
}

inline xd::schema fit_ffm() {
    auto s = xd::libffm_schema(3);
    s.start_fit();
    const std::vector<std::vector<std::string>> rows = {{"1", "0:5:1", "1:7:0.5", "2:9:1"}, {"0", "0:5:1", "2:3:2"}};
    for (auto& r : rows) {
        xd::request_record rr(r);
        s.fit_record(rr.record());
    }
    s.finish_fit();
    return s;
}

}  // namespace xrec_fuzz
