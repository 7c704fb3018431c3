// Tokenizers for generation (see tokenizer.h).
#include "data/tokenizer.h"

#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/check.h"

namespace fs = std::filesystem;

namespace scmoe {

namespace {

// prepare.py's tokenizer, reached through python3 so that prompts tokenise exactly as the data did.
const char* kGpt2Script = R"PY(import sys
try:
    import tiktoken
except ImportError:
    sys.exit("the gpt2 tokenizer needs tiktoken: `pip install tiktoken` (as data/prepare.py does)")
try:
    enc = tiktoken.get_encoding("gpt2")
except Exception as e:
    sys.exit(f"tiktoken could not load the gpt2 encoding ({e}); it downloads its vocabulary on first use")
if sys.argv[1] == "vocab":
    sys.stdout.write("".join(enc.decode_single_token_bytes(t).hex() + "\n" for t in range(enc.n_vocab)))
else:
    with open(sys.argv[2], "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    sys.stdout.write(" ".join(map(str, enc.encode_ordinary(text))) + "\n")
)PY";

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A private scratch directory, removed on scope exit.
struct ScratchDir {
  fs::path path;
  ScratchDir() {
    std::string t = (fs::temp_directory_path() / "scmoe_tok_XXXXXX").string();
    SCMOE_CHECK_IO(::mkdtemp(t.data()), t, "cannot create a temporary directory");
    path = t;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Runs the gpt2 script with `args` and returns its stdout; its error message becomes ours.
std::string run_gpt2_script(const std::string& args) {
  ScratchDir tmp;
  const fs::path script = tmp.path / "gpt2.py", err = tmp.path / "err.txt";
  std::ofstream(script) << kGpt2Script;
  const std::string cmd = "python3 '" + script.string() + "' " + args + " 2>'" + err.string() + "'";
  std::FILE* p = ::popen(cmd.c_str(), "r");
  SCMOE_CHECK_IO(p, cmd, "cannot run python3 for the gpt2 tokenizer");
  std::string out;
  char buf[1 << 16];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int rc = ::pclose(p);
  if (rc != 0) {
    std::string msg = read_text(err);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == '\r')) msg.pop_back();
    if (msg.empty()) msg = "python3 failed (is it installed?)";
    const size_t nl = msg.rfind('\n');  // the last line of a traceback says what went wrong
    SCMOE_FAIL("gpt2 tokenizer: " << (nl == std::string::npos ? msg : msg.substr(nl + 1))
                                  << " (or use data prepared with --tokenizer byte)");
  }
  return out;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

std::string tokenizer_from_meta_json(const std::string& text, const std::string& path) {
  // One string field of a JSON object written by json.dump: no general parser needed, but whatever the
  // file holds must give that string, "" (no such field) or an error naming the file.
  const size_t k = text.find("\"tokenizer\"");
  if (k == std::string::npos) return "";
  size_t at = k + 11;
  auto skip_space = [&] {
    while (at < text.size() && std::isspace(static_cast<unsigned char>(text[at]))) at++;
  };
  skip_space();
  const bool colon = at < text.size() && text[at] == ':';
  at += colon;
  skip_space();
  const size_t close =
      colon && at < text.size() && text[at] == '"' ? text.find('"', at + 1) : std::string::npos;
  SCMOE_CHECK(close != std::string::npos,
              path << ": \"tokenizer\" is not followed by a string value (data/prepare.py writes "
                      "\"tokenizer\": \"byte\" or \"gpt2\"; is the file damaged?)");
  return text.substr(at + 1, close - at - 1);
}

std::string tokenizer_from_meta(const std::string& shard_glob) {
  // data/prepare.py writes DIR/NAME_train_*.bin, DIR/NAME_val_*.bin and DIR/NAME_meta.json.
  const fs::path g(shard_glob);
  const std::string base = g.filename().string();
  for (const char* split : {"train_", "val_"}) {
    const size_t at = base.find(split);
    if (at == std::string::npos) continue;
    const fs::path meta = g.parent_path() / (base.substr(0, at) + "meta.json");
    if (!fs::is_regular_file(meta)) continue;
    const std::string kind = tokenizer_from_meta_json(read_text(meta), meta.string());
    if (!kind.empty()) return kind;
  }
  return "";
}

Tokenizer Tokenizer::byte() {
  Tokenizer t;
  t.name_ = "byte";
  return t;
}

Tokenizer Tokenizer::gpt2() { return from_vocab_lines(run_gpt2_script("vocab")); }

Tokenizer Tokenizer::from_vocab_lines(const std::string& text) {
  Tokenizer t;
  t.name_ = "gpt2";
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    SCMOE_CHECK(line.size() % 2 == 0, "gpt2 tokenizer: vocabulary line "
                                          << t.pieces_.size() + 1 << " has an odd number of hex digits");
    std::string piece;
    for (size_t i = 0; i + 1 < line.size(); i += 2) {
      const int hi = hex_digit(line[i]), lo = hex_digit(line[i + 1]);
      SCMOE_CHECK(hi >= 0 && lo >= 0,
                  "gpt2 tokenizer: vocabulary line " << t.pieces_.size() + 1 << " is not lowercase hex");
      piece += char(hi * 16 + lo);
    }
    t.pieces_.push_back(piece);
  }
  SCMOE_CHECK(!t.pieces_.empty(), "gpt2 tokenizer: python3 printed no vocabulary");
  return t;
}

std::vector<int32_t> parse_token_ids(const std::string& text, int vocab_size) {
  std::vector<int32_t> ids;
  std::istringstream in(text);
  for (std::string word; in >> word;) {
    int64_t id = -1;
    size_t used = 0;
    try {
      id = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    SCMOE_CHECK(used == word.size() && used > 0 && id >= 0 && id < vocab_size,
                "tokenizer: '" << word.substr(0, 40) << "' is not a token id in [0, " << vocab_size << ")");
    ids.push_back(int32_t(id));
  }
  return ids;
}

Tokenizer Tokenizer::for_config(const Config& cfg, std::string* notice) {
  std::string kind = cfg.inference.tokenizer, why = "inference.tokenizer";
  if (kind == "auto") {
    kind = tokenizer_from_meta(cfg.data.train);
    if (kind.empty()) kind = tokenizer_from_meta(cfg.data.val);
    why = "the data set's meta.json";
    if (kind.empty()) {
      SCMOE_CHECK(
          cfg.model.vocab_size == 256,
          "cannot tell which tokenizer the data used: no meta.json (data/prepare.py) beside data.train ("
              << cfg.data.train << ") and model.vocab_size is " << cfg.model.vocab_size
              << ", not 256; set inference.tokenizer=byte or gpt2");
      kind = "byte", why = "model.vocab_size 256, no meta.json found";
    }
  }
  SCMOE_CHECK(kind == "byte" || kind == "gpt2",
              "tokenizer '" << kind << "' (from " << why << ") is not supported by generate: byte or gpt2");
  if (notice) *notice = kind + " tokenizer (" + why + ")";
  return kind == "byte" ? byte() : gpt2();
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids;
  if (name_ == "byte") {
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }
  ScratchDir tmp;
  const fs::path f = tmp.path / "prompt.txt";
  std::ofstream(f, std::ios::binary) << text;
  return parse_token_ids(run_gpt2_script("encode '" + f.string() + "'"), vocab_size());
}

std::string Tokenizer::decode(int32_t token) const {
  if (name_ == "byte") return token >= 0 && token < 256 ? std::string(1, char(token)) : "\xEF\xBF\xBD";
  return token >= 0 && token < int32_t(pieces_.size()) ? pieces_[token] : "\xEF\xBF\xBD";
}

}  // namespace scmoe
