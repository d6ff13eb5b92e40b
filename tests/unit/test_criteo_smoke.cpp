// The real-data smoke run CI does (issue 4): Criteo through the reader, the fitted schema,
// deepfm and the trainer, one epoch, AUC on dev+test at least 0.65. The full evaluation
// (every model, 5 seeds, 3 epochs, the PyTorch parity runs) is the eval preset's job.
#include <doctest/doctest.h>

#include <cstdio>

#include "support/data.hpp"
#include "xrec/data/readers.hpp"
#include "xrec/data/schema.hpp"
#include "xrec/models/deepfm.hpp"
#include "xrec/train/trainer.hpp"

TEST_CASE("criteo smoke: one epoch of deepfm reaches AUC >= 0.65 on dev+test") {
    const auto dir = xrec_test::data_dir("criteo");
    if (!dir) return;
    using T = float;
    using B = xrec::cpu<>;
    auto s = xrec::data::criteo_schema(1);
    auto tr = xrec::data::criteo_reader((*dir / "criteo_train.tsv").string());
    s.fit(tr);
    tr.rewind();
    const auto train = s.encode_all<T>(tr).rows;
    xrec::data::ctr_dataset<T> ev(s.layout());
    for (const char* f : {"criteo_dev.tsv", "criteo_test.tsv"}) {
        auto r = xrec::data::criteo_reader((*dir / f).string());
        const auto e = s.encode_all<T>(r, xrec::data::encode_mode::serve).rows;
        for (std::int64_t i = 0; i < e.size(); ++i) ev.append_row_of(e, i);
    }
    REQUIRE(train.size() == 7200);
    REQUIRE(ev.size() == 800);

    xrec::param_store<T, B> store(1);
    xrec::models::deepfm<T, B> model(store, s.layout(), {.dim = 8, .dnn = {.hidden = {200, 200}}});
    xrec::train::trainer_options o;
    o.epochs = 1;
    o.batch_size = 64;  // one epoch is 113 steps: enough for deepfm to leave its initial point
    o.seed = 1;
    o.dense_lr = 1e-3;
    o.sparse = xrec::train::sparse_optimizer::lazy_adam;
    o.sparse_lr = 1e-3;
    o.progress = false;
    xrec::train::trainer t(model, store, o);
    const auto h = t.fit(train, ev);
    const auto m = t.evaluate(ev);
    MESSAGE("criteo deepfm, 1 epoch: train loss " << h.epochs.at(0).train_loss << ", dev+test AUC " << m.at(0).auc
                                                 << ", logloss " << m.at(0).logloss);
    CHECK(m.at(0).auc >= 0.65);
    CHECK(m.at(0).logloss < 0.55);
}
