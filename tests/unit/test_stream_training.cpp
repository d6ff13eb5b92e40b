// Issue 4: a stream with unseen, hashed and growing ids trains (through the trainer, straight
// from the file) and serves without error; recycled rows of a growing table start over.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>


#include "support/temp_file.hpp"
#include "xrec/data/readers.hpp"
#include "xrec/data/schema.hpp"
#include "xrec/data/stream.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/train/trainer.hpp"


TEST_CASE("stream training: hashed, growing and unseen ids train from the file and serve; recycled rows reset") {
    using T = float;
    using B = xrec::cpu<>;
    // Clicks depend on the user's parity and the category: learnable from hashed users.
    std::string train = "click,user,item,cat\n", serve = "click,user,item,cat\n";
    for (int i = 0; i < 3000; ++i) {
        const int u = (i * 13) % 101, c = i % 5;
        const bool click = ((u % 2) ^ (c < 2)) != 0;
        train += std::to_string(click ? 1 : 0);
        train.append(",u").append(std::to_string(u)).append(",i").append(std::to_string((i * 7) % 97 + i / 300));
        train.append(",c").append(std::to_string(c)).append("\n");
    }
    for (int i = 0; i < 50; ++i) {
        serve.append("0,new_u").append(std::to_string(i)).append(",unseen_i").append(std::to_string(i));
        serve.append(",c").append(std::to_string(i % 9)).append("\n");
    }
    xrec_test::temp_file tf("stream_train_fit.csv", train), sf("stream_serve_fit.csv", serve);
    auto s = xrec::data::schema::from_spec("click=label; user=sparse(hash=256); item=sparse(grow=32, admit=2); cat=sparse");
    xrec::data::delimited_reader fr(tf.path.string());
    s.fit(fr);

    xrec::param_store<T, B> store(3);
    xrec::models::deepfm<T, B> model(store, s.layout(), {.dim = 4, .dnn = {.hidden = {16}}});
    xrec::train::trainer_options o;
    o.epochs = 3;
    o.batch_size = 64;
    o.sparse = xrec::train::sparse_optimizer::lazy_adam;
    o.sparse_lr = 1e-2;
    o.dense_lr = 1e-2;
    o.progress = false;
    xrec::train::trainer tr(model, store, o);

    xrec::data::delimited_reader trd(tf.path.string());
    xrec::data::stream_source<T, xrec::data::delimited_reader> src(trd, s, {64, 256, 1, xrec::data::encode_mode::train});
    const auto h = tr.fit(src);
    REQUIRE(h.epochs.size() == 3);
    for (const auto& e : h.epochs) CHECK(std::isfinite(e.train_loss));
    CHECK(h.epochs.back().train_loss < h.epochs.front().train_loss);
    CHECK(s.growing(1).evictions() > 0);  // the item table recycled rows while training

    // Serving: unseen users hash into buckets, unseen items and categories map to row 0.
    xrec::data::delimited_reader srd(sf.path.string());
    xrec::data::stream_source<T, xrec::data::delimited_reader> serve_src(srd, s, {16, 0, 0, xrec::data::encode_mode::serve});
    const auto p = tr.predict(serve_src);
    REQUIRE(p.size() == 50);
    for (auto v : p) CHECK((std::isfinite(v) && v > 0 && v < 1));
    // And a single request through the same encoding path.
    xrec::data::encoded_row<T> row;
    s.encode_request_named({{"user", "someone_new"}, {"item", "never_seen"}, {"cat", "c3"}}, row);
    CHECK(row.sparse.at(1) == s.layout().tables[1].offset);  // unseen growing value -> 0
    MESSAGE("stream training: train loss " << h.epochs.front().train_loss << " -> " << h.epochs.back().train_loss << ", "
                                           << s.growing(1).evictions() << " evictions; 50 unseen serving rows scored");

    // forget_rows zeroes the rows in every global-id table and their optimizer state.
    const std::int64_t id = s.layout().tables[1].offset + 3;
    auto& emb = store.table(store.find_table("deepfm.embedding"));
    emb.row(id)[0] = 1.5f;
    const std::int64_t ids[] = {id};
    tr.forget_rows(ids);
    for (std::int64_t d = 0; d < emb.dim; ++d) CHECK(emb.row(id)[d] == 0.0f);
    for (auto& st : tr.optimizer_state())
        if (st.s.rank == 2 && st.s[0] > id && st.name.find("deepfm.embedding") != std::string::npos)
            for (std::int64_t d = 0; d < st.s[1]; ++d) CHECK(st.data[id * st.s[1] + d] == 0.0f);
}
