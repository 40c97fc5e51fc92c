// YaRN rope tables and the MLA softmax scale against numbers computed independently:
// tests/model/data/rope_reference.py re-implements transformers 5's _compute_yarn_parameters, its
// rotary embedding's cos/sin and DeepseekV3Attention's softmax scale with Python's math module
// (float64) and printed the tables below. Positions and frequency indices are odd and uneven on
// purpose, on both sides of the original context and of the ramp's ends.
//
// Bounds: inverse frequencies agree to 1e-13 relative (both float64, the formula's terms grouped
// differently); a table entry is the float64 value rounded to float once, so it is within half a
// float ulp of the reference, < 6e-8 for |value| < 2 (the angle's float64 error at position
// 163839 is ~3e-11), checked at 1e-7; the softmax scale is a float, checked at 1e-7 relative.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <vector>

#include "atom/ops/rope.hpp"
#include "atom/pipeline/model.hpp"

using namespace atom;
using ops::RopeScaling;

namespace {

struct Sample {
  index_t position;
  index_t i;  // frequency index: column i holds cos, rot_dim / 2 + i the sine
  double cos;
  double sin;
};

// ---- printed by tests/model/data/rope_reference.py ----
// deepseek_v3
constexpr double deepseek_v3_attention_factor = 1.0;
constexpr std::array<double, 32> deepseek_v3_inv_freq{1.0,
                                                      0.7498942093324559,
                                                      0.5623413251903491,
                                                      0.4216965034285823,
                                                      0.31622776601683794,
                                                      0.23713737056616555,
                                                      0.17782794100389226,
                                                      0.1333521432163324,
                                                      0.1,
                                                      0.07498942093324558,
                                                      0.056234132519034905,
                                                      0.03900692656714386,
                                                      0.026879360111431223,
                                                      0.018378146218877827,
                                                      0.01244795587027246,
                                                      0.008334508951020777,
                                                      0.0055,
                                                      0.0035619974943291656,
                                                      0.002249365300761396,
                                                      0.0013705136361428923,
                                                      0.0007905694150420945,
                                                      0.00041499039849078964,
                                                      0.0001778279410038922,
                                                      3.33380358040831e-05,
                                                      2.5e-05,
                                                      1.8747355233311396e-05,
                                                      1.4058533129758728e-05,
                                                      1.0542412585714557e-05,
                                                      7.905694150420947e-06,
                                                      5.9284342641541385e-06,
                                                      4.445698525097307e-06,
                                                      3.33380358040831e-06};
constexpr std::array<Sample, 40> deepseek_v3_samples{{
    {1, 0, 0.5403023058681398, 0.8414709848078965},
    {1, 5, 0.9720144485742658, 0.23492107560384184},
    {1, 10, 0.9984192777926645, 0.056204499214692484},
    {1, 11, 0.9992393262968733, 0.0389970355510629},
    {1, 16, 0.9999848750381276, 0.005499972270875273},
    {1, 22, 0.9999999841886117, 0.00017782794006665666},
    {1, 23, 0.9999999994442876, 3.3338035797907646e-05},
    {1, 31, 0.9999999999944429, 3.333803580402135e-06},
    {7, 0, 0.7539022543433046, 0.6569865987187891},
    {7, 5, -0.08904716353671555, 0.9960274105997613},
    {7, 10, 0.9235194610599585, 0.3835515676457648},
    {7, 11, 0.9629532922962935, 0.269668234791807},
    {7, 16, 0.9992589665398547, 0.038490489600700166},
    {7, 22, 0.9999992252420733, 0.0012447952655554792},
    {7, 23, 0.9999999727700967, 0.00023336624851040154},
    {7, 31, 0.9999999997277009, 2.3336625060739992e-05},
    {4095, 0, -0.0659759965580649, -0.9978212103769744},
    {4095, 5, -0.9475221249275924, -0.3196901981179592},
    {4095, 10, -0.5877600452089475, -0.8090353077931617},
    {4095, 11, -0.883337489097393, 0.46873753887982256},
    {4095, 16, -0.8621230924986953, -0.5066988981441405},
    {4095, 22, 0.7463699537464324, 0.6655312856241608},
    {4095, 23, 0.9906957104929178, 0.13609558850650794},
    {4095, 31, 0.9999068139101732, 0.013651501602613886},
    {4097, 0, 0.9347719612835539, 0.3552483362355101},
    {4097, 5, -0.6969381994947346, -0.7171311916832495},
    {4097, 10, -0.4932475477739021, -0.8698889909724299},
    {4097, 11, -0.9171817245997094, 0.3984691757969529},
    {4097, 16, -0.8564973590999666, -0.5161514059409147},
    {4097, 22, 0.74613320643045, 0.6657966943908744},
    {4097, 23, 0.9906866339715525, 0.13616164390207372},
    {4097, 31, 0.999906722865097, 0.01365816858814296},
    {163839, 0, 0.2286846488279413, -0.9735005554135248},
    {163839, 5, -0.9628829411255294, -0.26991932440907274},
    {163839, 10, -0.583946036449071, 0.8117924774937375},
    {163839, 11, 0.6551732285928075, 0.7554786830449135},
    {163839, 16, -0.8665285620966474, 0.49912748979666177},
    {163839, 22, -0.651817225659836, -0.7583760968893432},
    {163839, 23, 0.6814056589234814, -0.7319059556985831},
    {163839, 31, 0.8545009141248134, 0.5194498895561133},
}};
// untruncated
constexpr double untruncated_attention_factor = 1.138629436111989;
constexpr std::array<double, 12> untruncated_inv_freq{1.0,
                                                      0.07905694150420949,
                                                      0.025000000000000005,
                                                      0.007905694150420948,
                                                      0.002500000000000001,
                                                      0.0007905694150420946,
                                                      0.00025,
                                                      7.905694150420944e-05,
                                                      2.5000000000000015e-05,
                                                      7.905694150420949e-06,
                                                      2.4999999999999985e-06,
                                                      7.905694150420952e-07};
constexpr std::array<Sample, 24> untruncated_samples{{
    {3, 0, -1.1272345981592655, 0.16068339520132596},
    {3, 1, 1.1067553143225313, 0.2675250773283529},
    {3, 3, 1.138309211594029, 0.027002436573136106},
    {3, 5, 1.1386262337182012, 0.0027004942900552375},
    {3, 7, 1.1386294040880363, 0.0002700496796453138},
    {3, 11, 1.1386294361087868, 2.700496821767766e-06},
    {33, 0, -0.015117295203993632, 1.1385290774356278},
    {33, 1, -0.9808519330439396, 0.5782788931170437},
    {33, 3, 1.1000997344833274, 0.29369638569519096},
    {33, 5, 1.1382419682594525, 0.02970209544045655},
    {33, 7, 1.138625561215887, 0.002970543134234781},
    {33, 11, 1.1386294357244993, 2.9705465036103563e-05},
    {101, 0, 1.015663001896041, 0.5146898671629633},
    {101, 1, -0.1484739415459677, 1.1289076496607289},
    {101, 3, 0.7945353798227401, 0.8155921302897916},
    {101, 5, 1.1350016270397958, 0.09082014863301355},
    {101, 7, 1.1385931389333444, 0.009091576025109075},
    {101, 11, 1.138629432482252, 9.091672623632487e-05},
    {127, 0, 0.26457091331951754, 1.107465225009789},
    {127, 1, -0.929704197991156, -0.6573637478735253},
    {127, 3, 0.6113444595828151, 0.9605909350593008},
    {127, 5, 1.1328952074119674, 0.11412905766587988},
    {127, 7, 1.1385720461123003, 0.01143191114188661},
    {127, 11, 1.138629430372941, 0.00011432103192953803},
}};
// mscale_ratio
constexpr double mscale_ratio_attention_factor = 1.121751143713058;
constexpr std::array<double, 8> mscale_ratio_inv_freq{1.0,
                                                      0.24211188335664152,
                                                      0.053125000000000006,
                                                      0.009388011803624875,
                                                      0.000625,
                                                      0.00019764235376052369,
                                                      6.25e-05,
                                                      1.976423537605237e-05};
constexpr std::array<Sample, 24> mscale_ratio_samples{{
    {5, 0, 0.31819838097151965, -1.07567440183759},
    {5, 1, 0.3954127313812289, 1.0497496845835153},
    {5, 2, 1.0824097820822387, 0.29447358467990725},
    {5, 3, 1.120515554682857, 0.05263573059551253},
    {5, 5, 1.121750595983052, 0.0011085275014606228},
    {5, 7, 1.1217511382357577, 0.00011085276800807973},
    {255, 0, -0.967290058312413, -0.568045395643273},
    {255, 1, 0.5154858425369437, -0.9962931167912037},
    {255, 2, 0.6243707080471491, 0.9319264173497045},
    {255, 3, -0.8225677075530085, 0.7626978398504497},
    {255, 5, 1.1203267993804877, 0.056510981334834356},
    {255, 7, 1.1217368972845962, 0.00565346724416339},
    {257, 0, 0.9190569143688161, -0.6431640666054227},
    {257, 1, 0.9200196925141065, -0.6417860966145984},
    {257, 2, 0.5220187571966166, 0.9928857162616721},
    {257, 3, -0.8367423094307981, 0.7471197601656433},
    {257, 5, 1.1203043739288108, 0.056953824959602606},
    {257, 7, 1.1217366729353249, 0.005697807783870942},
    {4095, 0, -0.07400864959661808, -1.119307083961519},
    {4095, 1, 0.30534229449845435, -1.0793941409939065},
    {4095, 2, -0.7998454295324519, -0.7864940669055307},
    {4095, 3, 0.8247404485864978, 0.7603478288828716},
    {4095, 5, 0.773977301460861, 0.8119635245778701},
    {4095, 7, 1.1180791892024164, 0.09068933285685139},
}};

// ---- end of the printed tables ----

RopeScaling yarn(double factor, index_t original, double beta_fast, double beta_slow, double mscale,
                 double mscale_all_dim, bool truncate = true) {
  RopeScaling s;
  s.kind = RopeScaling::Kind::yarn;
  s.factor = factor;
  s.original_max_position = original;
  s.beta_fast = beta_fast;
  s.beta_slow = beta_slow;
  s.mscale = mscale;
  s.mscale_all_dim = mscale_all_dim;
  s.truncate = truncate;
  return s;
}

template <std::size_t F, std::size_t N>
void check_case(index_t rot_dim, double theta, const RopeScaling& s, double attention_factor,
                const std::array<double, F>& inv_freq, const std::array<Sample, N>& samples) {
  REQUIRE(static_cast<std::size_t>(rot_dim / 2) == F);
  const ops::RopeFrequencies f = ops::rope_frequencies(rot_dim, theta, s);
  CHECK(f.attention_factor == Approx(attention_factor).epsilon(1e-13));
  REQUIRE(f.inv_freq.size() == F);
  for (std::size_t i = 0; i < F; ++i) {
    INFO("i = " << i);
    CHECK(f.inv_freq[i] == Approx(inv_freq[i]).epsilon(1e-13));
  }
  index_t max_positions = 0;
  for (const auto& x : samples) max_positions = std::max(max_positions, x.position + 1);
  const std::vector<float> table = ops::make_cos_sin_cache(max_positions, rot_dim, theta, s);
  for (const auto& x : samples) {
    INFO("position " << x.position << ", i " << x.i);
    const float c = table[static_cast<std::size_t>(x.position * rot_dim + x.i)];
    const float sn = table[static_cast<std::size_t>(x.position * rot_dim + rot_dim / 2 + x.i)];
    CHECK(std::fabs(static_cast<double>(c) - x.cos) <= 1e-7);
    CHECK(std::fabs(static_cast<double>(sn) - x.sin) <= 1e-7);
  }
}

}  // namespace

TEST_CASE("YaRN table of DeepSeek-V3 (factor 40 over 4096, mscale = mscale_all_dim = 1)",
          "[rope][yarn]") {
  check_case(64, 10000.0, yarn(40.0, 4096, 32.0, 1.0, 1.0, 1.0), deepseek_v3_attention_factor,
             deepseek_v3_inv_freq, deepseek_v3_samples);
  // The preset carries the same scaling.
  const auto m = pipeline::preset("deepseek-v3");
  check_case(m.qk_rope_dim, m.rope_theta, m.rope_scaling, deepseek_v3_attention_factor,
             deepseek_v3_inv_freq, deepseek_v3_samples);
}

TEST_CASE("YaRN table without mscales, untruncated correction range, 24 dims", "[rope][yarn]") {
  check_case(24, 1000000.0, yarn(4.0, 32, 8.0, 2.0, 0.0, 0.0, false), untruncated_attention_factor,
             untruncated_inv_freq, untruncated_samples);
}

TEST_CASE("YaRN table with mscale / mscale_all_dim != 1", "[rope][yarn]") {
  check_case(16, 10000.0, yarn(16.0, 256, 0.0, 0.0, 1.0, 0.5), mscale_ratio_attention_factor,
             mscale_ratio_inv_freq, mscale_ratio_samples);
}

TEST_CASE("An explicit attention_factor is used as given", "[rope][yarn]") {
  RopeScaling s = yarn(16.0, 256, 32.0, 1.0, 1.0, 0.5);
  s.attention_factor = 0.75;
  const auto table = ops::make_cos_sin_cache(2, 16, 10000.0, s);
  CHECK(table[0] == 0.75f);  // position 0: cos 0 = 1
  CHECK(table[8] == 0.0f);   // sin 0
}

TEST_CASE("Without scaling the table is the plain rope table", "[rope]") {
  CHECK(ops::make_cos_sin_cache(37, 18, 500000.0, RopeScaling{}) ==
        ops::make_cos_sin_cache(37, 18, 500000.0));
  const auto f = ops::rope_frequencies(18, 500000.0, RopeScaling{});
  CHECK(f.attention_factor == 1.0);
  CHECK(f.inv_freq[3] == Approx(std::pow(500000.0, -6.0 / 18.0)).epsilon(1e-15));
}

TEST_CASE("YaRN parameters outside their domain are rejected", "[rope][yarn]") {
  CHECK_THROWS_AS(ops::rope_frequencies(16, 10000.0, yarn(0.0, 256, 32.0, 1.0, 0.0, 0.0)),
                  ShapeError);
  CHECK_THROWS_AS(ops::rope_frequencies(16, 10000.0, yarn(4.0, 0, 32.0, 1.0, 0.0, 0.0)),
                  ShapeError);
  CHECK_THROWS_AS(ops::make_cos_sin_cache(8, 15, 10000.0, yarn(4.0, 64, 32.0, 1.0, 0.0, 0.0)),
                  ShapeError);
}

TEST_CASE("MLA softmax scale: qk_head_dim^-0.5 times the squared YaRN mscale", "[rope][mla]") {
  // rope_reference.py: mla_softmax_scale(...)
  CHECK(pipeline::mla_softmax_scale(pipeline::preset("deepseek-v3")) ==
        Approx(0.1352337788608801).epsilon(1e-7));
  CHECK(pipeline::mla_softmax_scale(pipeline::preset("deepseek-v3-tiny")) ==
        Approx(0.235470896631015).epsilon(1e-7));
  CHECK(ops::mla_softmax_scale(48, yarn(16.0, 256, 32.0, 1.0, 1.0, 0.5)) ==
        Approx(0.18713033519502428).epsilon(1e-13));
  // No mscale_all_dim, or no scaling: the plain scale.
  CHECK(ops::mla_softmax_scale(192, yarn(40.0, 4096, 32.0, 1.0, 1.0, 0.0)) ==
        Approx(0.07216878364870322).epsilon(1e-13));
  CHECK(ops::mla_softmax_scale(192, RopeScaling{}) == Approx(0.07216878364870322).epsilon(1e-13));
  CHECK(ops::yarn_get_mscale(1.0, 5.0) == 1.0);
}
